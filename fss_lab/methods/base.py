"""The one contract every few-shot method follows: ``fit(task) -> self``, ``predict(task) -> logits``.

A :class:`~fss_lab.methods.task.Task` holds everything a method may see. A :class:`Method` declares what it needs
(class attributes, read by the evaluator; nothing is discovered by inspecting signatures):

* ``transductive``: ``fit`` reads the task's queries (RePRI, DIaM), so the evaluator fits again for every batch of
  queries; inductive methods are fit once per support set and predict any number of query batches;
* ``feature_levels``: the feature levels it reads (``()``: any single level, the task's default);
* ``label_spaces``: ``"fss"`` (1-way episodes, ``B = 0``) and/or ``"gfss"`` (``B >= 1`` base classes);
  ``max_novel``: the most novel classes a GFSS task may have (``None``: any; seed 002's head adds one);
* ``support_base_pixels``: ``"background"`` (supports carry novel labels only: DIaM, prototypes) or ``"keep"``
  (base pixels labelled too: fine-tuning, seed 000);
* ``episodic_training``: the method is a model meta-trained on base-class episodes before testing;
* ``reads_query_labels`` (per instance): it reads ``task.query_labels`` (oracle priors: upper bounds only).

The shot count comes from the task, never from a constructor. ``fit_predict(tasks)`` runs several tasks; the
default loops, vectorised methods override it, and the results must equal the loop's (a contract test checks it).
"""
from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import torch

from ..labels import IGNORE_INDEX
from .task import LabelSpace, Task, check_labels, fss_shots_valid

FEATURE_SOURCES = ("bottleneck", "backbone")


class UnsupportedTaskError(ValueError):
    """A method was given a task it declares it cannot handle (the message names the method and the fix)."""


class NotFittedError(RuntimeError):
    """``predict`` was called before ``fit``."""


class Method(abc.ABC):
    """A few-shot method: adapts to a task's support set, then returns logits for the task's queries.

    Subclasses set the capability attributes (module docstring) and implement :meth:`fit` and :meth:`predict`.
    """

    name: ClassVar[str] = "method"
    transductive: ClassVar[bool] = False
    feature_levels: ClassVar[tuple[str, ...]] = ()
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)
    max_novel: ClassVar[int | None] = None
    support_base_pixels: ClassVar[str] = "background"
    episodic_training: ClassVar[bool] = False
    reads_query_labels: bool = False

    @abc.abstractmethod
    def fit(self, task: Task) -> "Method":
        """Adapt to ``task``'s support set (and, if ``transductive``, its queries); returns ``self``.

        Raises:
            UnsupportedTaskError: a label space the method does not declare. ValueError: bad shapes or labels.
        """

    @abc.abstractmethod
    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 1 + B + N, H, W]`` float32 (or log-probabilities, which keep the official argmax) for the
        task's queries at ``task.size``.

        Raises:
            NotFittedError: called before :meth:`fit`; ValueError: queries a transductive fit did not see.
        """

    def fit_predict(self, tasks: Sequence[Task]) -> list[torch.Tensor]:
        """``fit`` then ``predict`` each task; a list of logits ``[Q_t, 1 + B + N, H, W]``.

        Vectorised methods override this; their results must equal this loop's.
        """
        return [self.fit(t).predict(t) for t in tasks]

    # ---- capability checks shared by every method ----------------------------------------------------------

    @classmethod
    def supports(cls, space: LabelSpace) -> bool:
        """Whether the method handles tasks of ``space`` (``"fss"`` for ``B = 0``, else ``"gfss"`` with at most
        ``max_novel`` novel classes)."""
        if space.num_base == 0:
            return "fss" in cls.label_spaces
        return "gfss" in cls.label_spaces and (cls.max_novel is None or space.num_novel <= cls.max_novel)

    def check_task(self, task: Task) -> None:
        """Raise :class:`UnsupportedTaskError` for an undeclared label space, ``ValueError`` for labels outside
        the label space or a novel class without a support pixel."""
        if not self.supports(task.label_space):
            kind = "1-way FSS" if task.label_space.num_base == 0 else "GFSS"
            most = "" if self.max_novel is None else f" (GFSS with at most {self.max_novel} novel class(es))"
            raise UnsupportedTaskError(
                f"{self.name} handles {' and '.join(self.label_spaces)} tasks{most}, not {kind} tasks "
                f"(B={task.label_space.num_base}, N={task.label_space.num_novel}); pick a method from "
                f"fss_lab.methods.list_methods('{'fss' if kind == '1-way FSS' else 'gfss'}')")
        lab = task.support_labels
        if task.label_space.is_fss and fss_shots_valid(lab):  # values and every shot's foreground, one pass
            return
        check_labels(lab, task.label_space)
        missing = [c for c in task.label_space.novel_ids if not bool((lab == c).any())]
        if missing:
            raise ValueError(f"{self.name}: novel class(es) {missing} have no support pixel ({task.describe()}); each "
                             "support must show its class (sample with a min_area, or use a larger image size)")

    def features_of(self, task: Task) -> str | None:
        """The level this method reads in ``task`` (its declared one, else the task's default)."""
        return self.feature_levels[0] if self.feature_levels else None


def check_fss_support(task: Task) -> None:
    """Every support of a 1-way task shows the foreground: ``ValueError`` lists the shots without a foreground
    pixel (and, from :func:`~fss_lab.methods.task.check_labels`, labels other than 0/1/255)."""
    if task.label_space.is_fss and fss_shots_valid(task.support_labels):  # both checks in one pass
        return
    check_labels(task.support_labels, task.label_space)
    fg = (task.support_labels == 1).flatten(1).any(1)
    if not bool(fg.all()):
        bad_shots = [int(k) for k in torch.nonzero(~fg).flatten()]
        raise ValueError(
            f"support masks {bad_shots} have no foreground pixel ({task.describe()}); each support must show the "
            "class (sample with a min_area, or use a larger image size)")


def stack_tasks(tasks: Sequence[Task], level: str | None = None):
    """Stack equal-sized tasks for a vectorised method: ``(support [E, K, D, h, w], support labels [E, K, H, W],
    query [E, Q, D, h, w], query_valid [E, Q, H, W] or None)``.

    Raises:
        ValueError: tasks whose shapes differ (vectorised methods then fall back to the loop).
    """
    shapes = {(t.support(level).shape, t.query(level).shape, t.support_labels.shape, t.size) for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"cannot stack tasks of different shapes: {sorted(map(str, shapes))}")
    valid = None if all(t.query_valid is None for t in tasks) else _stack([t.valid() for t in tasks])
    return (_stack([t.support(level) for t in tasks]), _stack([t.support_labels for t in tasks]),
            _stack([t.query(level) for t in tasks]), valid)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, or, when the tensors are consecutive contiguous slices of one tensor (the evaluator splits
    each chunk's features that way), a view of that memory: the same values without the copy. The result may share
    memory with the tasks' tensors (methods do not write into their inputs)."""
    first = tensors[0]
    n, step = first.numel(), first.numel() * first.element_size()
    if n and all(t.is_contiguous() and t.shape == first.shape and t.dtype == first.dtype and t.device == first.device
                 and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                 and t.data_ptr() == first.data_ptr() + i * step for i, t in enumerate(tensors)):
        return first.as_strided((len(tensors), *first.shape), (n, *first.stride()))
    return torch.stack(list(tensors))


__all__ = ["FEATURE_SOURCES", "IGNORE_INDEX", "Method", "NotFittedError", "UnsupportedTaskError", "check_fss_support",
           "stack_tasks"]
