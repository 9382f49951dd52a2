"""The one interface every few-shot method shares: ``fit`` on a support set, ``predict`` query logits.

Methods work on features from a frozen extractor, so features can be cached per image and reused across episodes
(:class:`fss_lab.models.features.FeatureCache`). Transductive methods (RePRI, DIaM) also receive the query features
in :meth:`FewShotMethod.fit`; inductive ones ignore them.
"""
from __future__ import annotations

import abc
from typing import ClassVar

import torch

from ..data.base import IGNORE_INDEX


class FewShotMethod(abc.ABC):
    """Adapts to a support set, then segments queries.

    Subclasses set ``name`` and implement :meth:`fit` and :meth:`predict`.
    """

    name: ClassVar[str] = "method"
    transductive: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(
        self,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_features: torch.Tensor | None = None,
    ) -> "FewShotMethod":
        """Adapt to one episode.

        Args:
            support_features: float32 ``[K, D, h, w]`` features of the K support images.
            support_masks: integer (int64 or uint8) ``[K, H, W]`` labels at image resolution (FSS: 0/1, 255 = ignore).
            query_features: float32 ``[Q, D, h, w]``; used only by transductive methods.

        Returns:
            ``self``.
        """

    @abc.abstractmethod
    def predict(self, query_features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Segment queries.

        Args:
            query_features: float32 ``[Q, D, h, w]``.
            size: ``(H, W)`` in pixels of the returned logits (the label resolution).

        Returns:
            float32 logits ``[Q, C, H, W]`` (``C = 2`` for 1-way FSS: background, foreground). Not probabilities.
        """

    def fit_predict(
        self,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_features: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """``fit`` then ``predict``; transductive methods see the query in ``fit``."""
        self.fit(support_features, support_masks, query_features if self.transductive else None)
        return self.predict(query_features, size)


    def fit_predict_episodes(
        self,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_features: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Run E independent episodes of equal K and Q at once.

        Args:
            support_features: ``[E, K, D, h, w]``; support_masks: int64 ``[E, K, H, W]``;
            query_features: ``[E, Q, D, h, w]``; size: ``(H, W)`` of the logits.

        Returns:
            logits ``[E, Q, C, H, W]``. The default loops over episodes with :meth:`fit_predict`; methods with a
            vectorised form override it (the results must be the same as the loop's).
        """
        return torch.stack(
            [self.fit_predict(sf, sm, qf, size) for sf, sm, qf in zip(support_features, support_masks, query_features)]
        )


class GFSSMethod(abc.ABC):
    """Generalized FSS: extend a base model to N novel classes from a support set, then segment queries into
    background, the B base classes and the N novel classes at once.

    Label space (:class:`fss_lab.data.class_maps.GFSSClassMap`): ``0`` background, ``1..B`` base, ``B+1..B+N`` novel,
    ``255`` ignore. Constructors take what each method needs from the base model (its classifier, its head).
    """

    name: ClassVar[str] = "gfss-method"
    transductive: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(
        self,
        support_features: torch.Tensor,
        support_labels: torch.Tensor,
        query_features: torch.Tensor | None = None,
    ) -> "GFSSMethod":
        """Adapt to one support set.

        Args:
            support_features: float32 ``[S, D, h, w]`` features of the S support images.
            support_labels: int64 ``[S, H, W]`` GFSS labels at image resolution (novel classes labelled; base pixels
                labelled when the protocol provides them, else 0); 255 ignore.
            query_features: float32 ``[Q, D, h, w]``; used by transductive methods (DIaM) only.
        """

    @abc.abstractmethod
    def predict(self, query_features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits ``[Q, 1 + B + N, H, W]`` (float32, not probabilities) at ``size`` pixels."""


def check_support(support_features: torch.Tensor, support_masks: torch.Tensor) -> None:
    """Validate a support set's shapes and labels; ``ValueError`` names the tensor, its shape and the fix."""
    if support_features.dim() != 4:
        raise ValueError(f"support_features must be [K, D, h, w], got shape {tuple(support_features.shape)}")
    if support_masks.dim() != 3:
        raise ValueError(f"support_masks must be [K, H, W], got shape {tuple(support_masks.shape)}")
    if support_features.shape[0] != support_masks.shape[0]:
        raise ValueError(
            f"{support_features.shape[0]} support feature maps but {support_masks.shape[0]} support masks; "
            "pass one mask per support image"
        )
    bad = (support_masks > 1) & (support_masks != IGNORE_INDEX)
    if support_masks.is_signed():
        bad |= support_masks < 0
    if bool(bad.any()):
        extra = sorted(set(support_masks[bad].tolist()))
        raise ValueError(f"support masks of a 1-way episode must hold 0, 1 or 255, found {extra}")
    fg = (support_masks == 1).flatten(1).any(1)
    if not bool(fg.all()):
        bad_shots = [int(k) for k in torch.nonzero(~fg).flatten()]
        raise ValueError(
            f"support masks {bad_shots} have no foreground pixel; each support must show the class "
            "(sample with a min_area, or use a larger image size)"
        )