"""The label convention every part of fss_lab shares (no I/O here, so losses, metrics and methods can import it).

* ``BACKGROUND = 0``: background (a dataset without a background class, e.g. CamVid, simply never uses it);
* ``1..C``: classes (dataset ids in datasets; ``1..B`` base and ``B+1..B+N`` novel in a GFSS label space, see
  :class:`fss_lab.methods.task.LabelSpace`; ``1`` is the foreground of a 1-way FSS episode);
* ``IGNORE_INDEX = 255``: ignore (void, object boundaries, unlabelled pixels, padding added by transforms).

Source: the PFENet / RePRI / DIaM convention (fss-methods.md section 1.3).
"""
from __future__ import annotations

IGNORE_INDEX = 255
BACKGROUND = 0

__all__ = ["BACKGROUND", "IGNORE_INDEX"]
