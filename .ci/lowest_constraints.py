"""Print pip constraints pinning every ``>=X`` floor of pyproject.toml (core and extras) to ``==X``.

Used by ``make test-lowest``; torch and torchvision are left out (CI pins them in constraints.txt).
"""
import sys
import tomllib

from packaging.requirements import Requirement

SKIP = {"torch", "torchvision"}


def main(path: str) -> None:
    """Print one ``name==floor`` line per requirement with a lower bound."""
    project = tomllib.loads(open(path, "rb").read().decode())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    for line in reqs:
        req = Requirement(line)
        floors = [s.version for s in req.specifier if s.operator == ">="]
        if floors and req.name not in SKIP:
            print(f"{req.name}=={floors[0]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
