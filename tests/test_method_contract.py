"""The method contract (issue 8), checked for every registered method: ``fit(task) -> self``, ``predict(task) ->
[Q, 1 + B + N, H, W]``, ``fit_predict`` equal to the loop, seeded, declared label spaces enforced (by ``fit`` and by
the evaluator), registry consistent. A new method gets all of this by registering itself."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from fss_lab.engine.evaluate import _require
from fss_lab.methods import (LabelSpace, Method, NotFittedError, Task, UnsupportedTaskError, create_method,
                             list_methods, method_class)
from fss_lab.methods.base import FEATURE_SOURCES

B, N, K, Q = 2, 2, 1, 2  # GFSS task: 2 base and 2 novel classes, 1 shot; Q queries per task
D, C_IN = 8, 6  # bottleneck and backbone channels
H = W = 16  # label size; features on a 4 x 4 grid
#: Small settings so every method runs in well under a second (only keywords a method takes are passed).
FAST = {"steps": 3, "iterations": 3, "adapt_iter": 3}
SPACES = ("fss", "gfss")
NAMES = list_methods()


class TinyBaseModel(nn.Module):
    """A base model as the GFSS methods read it: ``.backbone``, ``.head`` (backbone features -> D channels) and
    ``.classifier = nn.Conv2d(D, 1 + B, 1)``."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.backbone = nn.Conv2d(3, C_IN, 3, stride=4, padding=1)
        self.head = nn.Sequential(nn.Conv2d(C_IN, D, 1), nn.BatchNorm2d(D), nn.ReLU())
        self.classifier = nn.Conv2d(D, 1 + B, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.eval()


@pytest.fixture(scope="module")
def model():
    return TinyBaseModel()


def build(name: str, model: nn.Module, **extra) -> Method:
    """``create_method(name, ...)`` with the base model (for methods that take one) and the FAST settings."""
    params = inspect.signature(method_class(name).__init__).parameters
    kwargs = {k: v for k, v in FAST.items() if k in params}
    if "model" in params:
        kwargs["model"] = model
    return create_method(name, **{**kwargs, **extra})


def _levels(s: int, q: int, gen: torch.Generator):
    """Both feature levels (``"bottleneck"`` first: the default of methods that read any level)."""
    rnd = lambda n, c: torch.randn(n, c, 4, 4, generator=gen)  # noqa: E731
    return ({"bottleneck": rnd(s, D), "backbone": rnd(s, C_IN)}, {"bottleneck": rnd(q, D), "backbone": rnd(q, C_IN)})


def make_task(space: str, seed: int = 0, num_novel: int = N) -> Task:
    """A random task: ``"fss"`` 1-way K-shot (labels 0 / 1 / 255) or ``"gfss"`` (B = 2, ``num_novel``, K = 1; each
    support shows its novel class and one base class, as fine-tuning supports do)."""
    gen = torch.Generator().manual_seed(seed)
    space_ = LabelSpace.fss() if space == "fss" else LabelSpace(B, num_novel)
    s = K * space_.num_novel
    sf, qf = _levels(s, Q, gen)
    labels = torch.zeros(s, H, W, dtype=torch.long)
    for i, c in enumerate(space_.novel_ids * K):
        y, x = torch.randint(0, 8, (2,), generator=gen).tolist()
        labels[i, y:y + 8, x:x + 8] = c
        if space_.num_base:
            labels[i, :4, -4:] = 1 + i % space_.num_base
    labels[:, -1, :] = 255
    q_labels = torch.randint(0, space_.num_classes, (Q, H, W), generator=gen)
    q_labels[:, :, 0] = 255
    return Task(sf, labels, qf, space_, shots=K, size=(H, W), query_valid=q_labels != 255,
                meta={"seed": seed, "space": space})


#: Methods whose GFSS tasks must have N = 1 (``max_novel = 1``): ``background-aware-ft`` adds ONE novel class to
#: the base classifier (seed 002's episodes).
ONE_NOVEL = {n for n in list_methods() if method_class(n).max_novel == 1}


def novel_of(name: str) -> int:
    """N of the GFSS tasks a method is checked on (N = 2 unless it takes one novel class only)."""
    return 1 if name in ONE_NOVEL else N


DECLARED = [(n, s) for n in NAMES for s in method_class(n).label_spaces]
#: (name, space, N): every declared label space; GFSS with N = 2 and N = 1.
SHAPE_CASES = [pytest.param(n, s, k, id=f"{n}-{s}-N{k}")
               for n, s in DECLARED for k in ((1,) if s == "fss" else (N, 1))
               if method_class(n).max_novel is None or k <= method_class(n).max_novel]
UNDECLARED = [(n, s) for n in NAMES for s in SPACES if s not in method_class(n).label_spaces]


# ---- declarations and the registry ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_declarations_are_well_formed(name):
    cls = method_class(name)
    assert issubclass(cls, Method) and cls.name == name
    assert cls.label_spaces and set(cls.label_spaces) <= set(SPACES)
    assert set(cls.feature_levels) <= set(FEATURE_SOURCES)
    assert cls.support_base_pixels in ("background", "keep")
    assert isinstance(cls.transductive, bool) and isinstance(cls.episodic_training, bool)


def test_list_methods_is_consistent_with_label_spaces():
    for space in SPACES:
        assert list_methods(space) == sorted(n for n in NAMES if space in method_class(n).label_spaces)
    assert sorted(set(list_methods("fss")) | set(list_methods("gfss"))) == NAMES
    assert list_methods() == sorted(NAMES) and len(NAMES) >= 8


def test_create_method_unknown_name_and_bad_keyword(model):
    with pytest.raises(KeyError, match="nope") as info:
        create_method("nope")
    assert all(n in str(info.value) for n in NAMES)
    with pytest.raises(TypeError, match=r"create_method\('prototype'\).*takes \['temperature'\]"):
        create_method("prototype", temprature=3.0)


# ---- fit / predict -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,space,num_novel", SHAPE_CASES)
def test_output_shape_on_every_declared_label_space(name, space, num_novel, model):
    task = make_task(space, 0, num_novel)
    method = build(name, model)
    assert method.fit(task) is method, "fit returns self"
    with torch.no_grad():
        out = method.predict(task)
    assert tuple(out.shape) == (Q, task.label_space.num_classes, H, W)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", NAMES)
def test_predict_before_fit_raises_not_fitted(name, model):
    task = make_task(method_class(name).label_spaces[0])
    with pytest.raises(NotFittedError, match=r"fit\(task\).* before predict\(\)"):
        build(name, model).predict(task)
    assert issubclass(NotFittedError, RuntimeError)


@pytest.mark.parametrize("name,space", DECLARED)
def test_fit_predict_equals_the_loop(name, space, model):
    tasks = [make_task(space, 1, novel_of(name)), make_task(space, 2, novel_of(name))]
    fast = build(name, model).fit_predict(tasks)
    loop = [build(name, model).fit(t).predict(t) for t in tasks]
    assert isinstance(fast, list) and len(fast) == 2
    for a, b in zip(fast, loop):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(fast[0], fast[1]), "each task fit on its own support set"


@pytest.mark.parametrize("name,space", DECLARED)
def test_same_seed_same_result(name, space, model):
    task = make_task(space, 3, novel_of(name))
    torch.manual_seed(1)
    a = build(name, model).fit(task).predict(task)
    torch.manual_seed(2)  # the global RNG must not matter
    b = build(name, model).fit(task).predict(task)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if not method_class(n).transductive])
def test_inductive_methods_predict_other_queries(name, model):
    # fit once per support set, predict any query batch (what the evaluator does for inductive methods)
    space = method_class(name).label_spaces[0]
    task = make_task(space, 4, novel_of(name))
    other = task.with_queries(_levels(1, 3, torch.Generator().manual_seed(9))[1])
    out = build(name, model).fit(task).predict(other)
    assert tuple(out.shape) == (3, task.label_space.num_classes, H, W)


# ---- undeclared label spaces ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,space", UNDECLARED)
def test_undeclared_label_space_is_refused_by_fit_and_by_the_evaluator(name, space, model):
    task = make_task(space)
    method = build(name, model)
    with pytest.raises(UnsupportedTaskError, match=f"^{name} handles") as info:
        method.fit(task)
    assert f"list_methods('{space}')" in str(info.value)
    with pytest.raises(UnsupportedTaskError, match=f"^{name} declares label_spaces") as info:
        _require(method, task.label_space)
    assert str(list_methods(space)) in str(info.value)
    assert issubclass(UnsupportedTaskError, ValueError)


@pytest.mark.parametrize("name", sorted(ONE_NOVEL))
def test_max_novel_is_refused_up_front_by_fit_and_by_the_evaluator(name, model):
    task = make_task("gfss", num_novel=2)
    method = build(name, model)
    with pytest.raises(UnsupportedTaskError, match="at most 1 novel"):
        method.fit(task)
    with pytest.raises(UnsupportedTaskError, match="max_novel=1"):
        _require(method, task.label_space)
