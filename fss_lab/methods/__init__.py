'''Few-shot methods: one contract (:class:`Method` on a :class:`Task`), one registry.

Every method implements ``fit(task) -> self`` and ``predict(task) -> logits [Q, 1 + B + N, H, W]`` and declares its
capabilities (``transductive``, ``feature_levels``, ``label_spaces``, ``support_base_pixels``,
``episodic_training``; see :mod:`fss_lab.methods.base`). The evaluator (:mod:`fss_lab.engine.evaluate`) builds the
tasks for every protocol and reads only these declarations. Registered methods::

    >>> from fss_lab.methods import list_methods, create_method
    >>> list_methods()   # doctest: +SKIP
    ['background-aware-ft', 'bcm', 'binary-ft', 'diam', 'finetune-all-after-backbone', 'finetune-last-layer',
     'gfss-prototype', 'prototype', 'repri']

Adding a method is one file plus the ``@register_method`` line, e.g. ``fss_lab/methods/nearest_pixel.py``::

    import torch, torch.nn.functional as F
    from typing import ClassVar
    from .base import Method, NotFittedError
    from .registry import register_method

    @register_method
    class NearestForegroundPixel(Method):
        """1-way FSS: a query pixel is foreground where its best cosine to a support foreground pixel beats
        its best cosine to a support background pixel. Training-free, inductive."""
        name: ClassVar[str] = "nearest-pixel"
        label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

        def fit(self, task):
            self.check_task(task)
            f = F.normalize(task.support(), dim=1)                        # [K, D, h, w]
            lab = F.interpolate(task.support_labels[:, None].float(), f.shape[-2:], mode="nearest")[:, 0]
            self.bank = [f.permute(0, 2, 3, 1)[lab == c] for c in (0, 1)]  # [P_c, D] each
            return self

        def predict(self, task):
            if not hasattr(self, "bank"):
                raise NotFittedError("call fit(task) first")
            q = F.normalize(task.query(), dim=1)                          # [Q, D, h, w]
            scores = torch.stack([torch.einsum("qdhw,pd->qphw", q, b).amax(1) for b in self.bank], 1)
            return F.interpolate(scores, task.size, mode="bilinear", align_corners=False)

and ``from . import nearest_pixel`` in :func:`fss_lab.methods.registry._load`. The contract test
(``tests/test_method_contract.py``) then runs it on FSS and GFSS tasks with every other method.
'''
from .base import Method, NotFittedError, UnsupportedTaskError
from .registry import create_method, list_methods, method_class, register_method
from .task import LabelSpace, Task

__all__ = ["LabelSpace", "Method", "NotFittedError", "Task", "UnsupportedTaskError", "create_method", "list_methods",
           "method_class", "register_method"]
