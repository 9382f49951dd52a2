"""The method registry: every method is one file plus one :func:`register_method` line.

``list_methods()`` names them; ``create_method(name, **kwargs)`` builds one (an unknown name lists the valid ones).
"""
from __future__ import annotations

import inspect
from typing import Callable

from .base import Method

_REGISTRY: dict[str, Callable[..., Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name``.

    Raises:
        ValueError: another class already holds that name.
    """
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods(label_space: str | None = None) -> list[str]:
    """Registered method names, sorted; ``label_space="fss"`` / ``"gfss"`` keeps those that handle it."""
    _load()
    return sorted(n for n, c in _REGISTRY.items() if label_space is None or label_space in c.label_spaces)


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``.

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
    """
    _load()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def create_method(name: str, **kwargs) -> Method:
    """Build the method registered as ``name`` with ``kwargs`` (GFSS methods take the base model:
    ``create_method("diam", model=base.model)``).

    Raises:
        KeyError: an unknown name (lists the valid ones); TypeError: a keyword the method does not take (lists
            its keywords).
    """
    cls = method_class(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise TypeError(f"create_method({name!r}): {exc}; {cls.__name__} takes {list(signature.parameters)}") from exc
    return cls(**kwargs)


def _load() -> None:
    """Import the method modules (each registers its classes)."""
    from . import bcm, binary_finetune, diam, eftnet, finetune, gfss_prototype, mmformer, pfenet, prototype, repri  # noqa: F401
