"""Backbone registry (timm style): ``@register_backbone``, ``list_backbones``, ``create_backbone``."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, TypeVar

from .base import Backbone

F = TypeVar("F", bound=Callable[..., Backbone])

class UnknownBackboneError(KeyError, ValueError):
    """An unknown backbone name; the message lists the valid names (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


_BACKBONES: dict[str, Callable[..., Backbone]] = {}
_UNSET: Any = object()


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering a factory ``fn(weights=..., **kwargs) -> Backbone`` under ``name``.

    Raises:
        ValueError: ``name`` is already registered (a second definition would silently shadow the first).
    """

    def decorator(fn: F) -> F:
        if name in _BACKBONES and _BACKBONES[name] is not fn:
            raise ValueError(f"backbone {name!r} is already registered (by {_BACKBONES[name].__module__})")
        _BACKBONES[name] = fn
        return fn

    return decorator


def list_backbones(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (e.g. ``"resnet*"``)."""
    names = sorted(_BACKBONES)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def create_backbone(name: str, weights: Any = _UNSET, **kwargs: Any) -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from :func:`list_backbones`.
        weights: passed to the factory; leave it out for the factory's default (``"imagenet"`` for
            ``efficientnet_lite0``, ``None`` (random init, no download) for the dilated ResNets).
        **kwargs: further factory arguments.

    Returns:
        The :class:`Backbone` (in train mode, as ``nn.Module`` constructors leave it).

    Raises:
        UnknownBackboneError: (a ``KeyError`` and a ``ValueError``) unknown ``name``; the message lists the valid
            names and suggests the closest one.
    """
    if name not in _BACKBONES:
        close = difflib.get_close_matches(name, list(_BACKBONES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackboneError(f"unknown backbone {name!r}.{hint} Valid names: {list_backbones()}")
    if weights is not _UNSET:
        kwargs["weights"] = weights
    return _BACKBONES[name](**kwargs)
