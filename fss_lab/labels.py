"""The label convention every part of fss_lab shares (no I/O here, so losses, metrics and methods can import it).

* ``BACKGROUND = 0``: background (a dataset without a background class, e.g. CamVid, simply never uses it);
* ``1..C``: classes (dataset ids in datasets; ``1..B`` base and ``B+1..B+N`` novel in a GFSS label space, see
  :class:`LabelSpace`; ``1`` is the foreground of a 1-way FSS episode);
* ``IGNORE_INDEX = 255``: ignore (void, object boundaries, unlabelled pixels, padding added by transforms).

Source: the PFENet / RePRI / DIaM convention (fss-methods.md section 1.3).
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255
BACKGROUND = 0


@dataclass(frozen=True)
class LabelSpace:
    """The classes a task's logits cover: background, ``num_base`` base classes, ``num_novel`` novel classes.

    Attributes:
        num_base: B (0 for 1-way FSS).
        num_novel: N (1 for 1-way FSS).

    Raises:
        ValueError: ``num_base < 0`` or ``num_novel < 1``.
    """

    num_base: int
    num_novel: int

    def __post_init__(self):
        if self.num_base < 0 or self.num_novel < 1:
            raise ValueError(f"a label space needs num_base >= 0 and num_novel >= 1, got {self.num_base}, "
                             f"{self.num_novel}")

    @classmethod
    def fss(cls) -> "LabelSpace":
        """The 1-way FSS label space: background 0, foreground 1."""
        return cls(0, 1)

    @property
    def is_fss(self) -> bool:
        """``True`` for 1-way FSS (no base class)."""
        return self.num_base == 0 and self.num_novel == 1

    @property
    def num_classes(self) -> int:
        """``1 + B + N``: the channels of a method's logits."""
        return 1 + self.num_base + self.num_novel

    @property
    def base_ids(self) -> tuple[int, ...]:
        """``(1, ..., B)``."""
        return tuple(range(1, self.num_base + 1))

    @property
    def novel_ids(self) -> tuple[int, ...]:
        """``(B + 1, ..., B + N)``."""
        return tuple(range(self.num_base + 1, self.num_classes))


__all__ = ["BACKGROUND", "IGNORE_INDEX", "LabelSpace"]
