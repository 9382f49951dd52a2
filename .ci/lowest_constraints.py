"""Print pip constraints pinning every ``>=X`` floor of pyproject.toml (core and extras) to ``==X``.

Used by ``make test-lowest`` in a bare venv (standard library only); torch and torchvision are left out (CI pins
them in constraints.txt).
"""
import re
import sys
import tomllib

SKIP = {"torch", "torchvision"}


def main(path: str) -> None:
    """Print one ``name==floor`` line per requirement with a lower bound."""
    project = tomllib.loads(open(path, "rb").read().decode())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    for line in reqs:
        name = re.match(r"\s*([A-Za-z0-9._-]+)", line).group(1)
        floor = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", line)
        if floor and name.lower() not in SKIP:
            print(f"{name}=={floor.group(1)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
