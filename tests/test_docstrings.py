"""Every public module, class and function of fss_lab has a docstring (the project's documentation standard)."""
import importlib
import inspect
import pkgutil

import fss_lab


def _public_objects():
    for info in pkgutil.walk_packages(fss_lab.__path__, prefix="fss_lab."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        yield info.name, module
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj


def test_public_api_is_documented():
    missing = [name for name, obj in _public_objects() if not (inspect.getdoc(obj) or "").strip()]
    assert missing == [], f"public objects without a docstring: {missing}"
