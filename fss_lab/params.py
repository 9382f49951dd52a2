"""Validation of notebook parameters (papermill ``-p`` / ``-y`` values), in one place (issue 9, finding 6).

Every notebook calls, right after its ``parameters`` cell::

    PARAMS = validate_parameters(globals(), "00_quickstart")

which checks each parameter's type and range, refuses unknown UPPER_CASE names (a misspelt ``-p SHOT 5`` would
otherwise be ignored and the run would finish with the default) and a ``DATA_ROOT`` that is given but unused
(or missing / nonexistent for a dataset that needs it), and returns the validated parameters as a JSON-able dict
(recorded in ``results.json``). Every problem is reported at once; each line names the parameter, the value and
the fix.

Note on papermill: ``-p NAME VALUE`` passes numbers, ``True``/``False``/``None`` and **strings**; a list such as
``-p SHOTS '[1, 5]'`` arrives as the string ``'[1, 5]'``. Pass lists with ``-y 'SHOTS: [1, 5]'`` (YAML).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["ParameterError", "Param", "NOTEBOOK_SPECS", "validate_parameters"]

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
DATASET_NAMES = ("synthetic", "camvid", "folder", "pascal5i", "coco20i", "fss1000")
#: datasets generated offline, without a data root
OFFLINE_DATASETS = ("synthetic",)


class ParameterError(ValueError):
    """Notebook parameters that are of the wrong type, out of range, unknown or inconsistent; one line per
    problem, each naming the parameter, its value and the fix."""


@dataclass(frozen=True)
class Param:
    """How one notebook parameter is checked.

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"choice"``, ``"int_list"`` (a list of ints, or one
            int where ``scalar_ok``), ``"float_list"``, ``"str_list"``, ``"size"`` (``[H, W]``), ``"path"``
            (a string path), ``"config"`` (a JSON path, built-in name or dict) or ``"device"``.
        minimum: smallest allowed number (each element for lists; both sides for ``"size"``).
        choices: allowed values for ``"choice"``.
        optional: ``None`` is allowed (it selects a documented default).
        scalar_ok: for list kinds, a single number is allowed too (e.g. notebook 03's ``SHOTS = 1``).
        empty_ok: for list kinds, ``[]`` is allowed too (it switches a section off, e.g. 04b's ``BACKBONES = []``).
        example: a valid value, shown in the fix.
    """

    kind: str
    minimum: float | None = None
    choices: tuple = ()
    optional: bool = False
    scalar_ok: bool = False
    example: str = ""
    empty_ok: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(v: Any) -> str:
    return f"the string {v!r}" if isinstance(v, str) else f"{v!r} ({type(v).__name__})"


def _papermill_hint(v: Any) -> str:
    if isinstance(v, str) and v.strip()[:1] in "[(":
        return " papermill -p passes lists as strings: use -y instead, e.g. -y 'NAME: [1, 5]'."
    return ""


def _check(name: str, value: Any, p: Param) -> str | None:
    """The problem with ``value`` for parameter ``name``, or ``None``."""
    if value is None:
        return None if p.optional else f"{name} = None is not allowed; give e.g. {name} = {p.example or '...'}"
    example = f" e.g. {name} = {p.example}" if p.example else ""
    low = f" >= {p.minimum:g}" if p.minimum is not None else ""
    if p.kind == "int":
        if not _is_int(value):
            return f"{name} must be an int{low}, got {_describe(value)};{example}.{_papermill_hint(value)}"
        if p.minimum is not None and value < p.minimum:
            return f"{name} must be{low}, got {value};{example}."
    elif p.kind == "float":
        if not _is_number(value):
            return f"{name} must be a number{low}, got {_describe(value)};{example}."
        if p.minimum is not None and value < p.minimum:
            return f"{name} must be{low}, got {value};{example}."
    elif p.kind == "bool":
        if not isinstance(value, bool):
            return f"{name} must be True or False, got {_describe(value)} (papermill: -p {name} True)."
    elif p.kind in ("str", "path"):
        if not isinstance(value, (str, Path)) or not str(value):
            what = "path" if p.kind == "path" else "string"
            return f"{name} must be a non-empty {what}, got {_describe(value)};{example}."
    elif p.kind == "choice":
        if value not in p.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in p.choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"{name} must be one of {list(p.choices)}, got {_describe(value)}.{hint}"
    elif p.kind == "config":
        if not isinstance(value, (str, Path, dict)) or (not isinstance(value, dict) and not str(value)):
            return (f"{name} must be a JSON path, a built-in config name or a dict, got {_describe(value)};"
                    f"{example}.")
    elif p.kind == "device":
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            return f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {_describe(value)}."
    elif p.kind == "size":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)
        if not ok:
            return (f"{name} must be [H, W], two ints in pixels (or None for the dataset default), got "
                    f"{_describe(value)}; e.g. {name} = [192, 192].{_papermill_hint(value)}"
                    + (" papermill: -y 'IMAGE_SIZE: [192, 192]'." if _is_int(value) else ""))
        if p.minimum is not None and min(value) < p.minimum:
            return f"{name} sides must be{low} pixels, got {list(value)}; e.g. {name} = [192, 192]."
    elif p.kind in ("int_list", "float_list", "str_list"):
        elem_ok: Callable[[Any], bool] = {"int_list": _is_int, "float_list": _is_number,
                                          "str_list": lambda v: isinstance(v, str) and bool(v)}[p.kind]
        what = {"int_list": "ints", "float_list": "numbers", "str_list": "strings"}[p.kind]
        if p.scalar_ok and elem_ok(value):
            value = [value]
        if not isinstance(value, (list, tuple)) or (not value and not p.empty_ok) \
                or not all(elem_ok(v) for v in value):
            kind = "list" if p.empty_ok else "non-empty list"
            return (f"{name} must be a {kind} of {what}{low}, got {_describe(value)};{example}."
                    f"{_papermill_hint(value)}")
        if p.minimum is not None and value and min(value) < p.minimum:
            return f"{name} values must be{low}, got {list(value)};{example}."
    else:  # pragma: no cover - a bad spec is a programming error
        raise ValueError(f"unknown Param kind {p.kind!r} for {name}")
    return None


_COMMON = {
    "DEVICE": Param("device", example="'auto'"),
    "SEED": Param("int", 0, example="0"),
    "QUICK": Param("bool"),
    "DATASET": Param("choice", choices=DATASET_NAMES),
    "DATA_ROOT": Param("path", optional=True, example="'../shared/data/camvid'"),
    "FOLD": Param("int", 0, example="0"),
    "RESULTS_DIR": Param("path", example="'results/00_quickstart'"),
}
_BASE = {"BASE_MODEL_DIR": Param("path", example="'results/base_models'")}
_POLICY = Param("choice", choices=("ignore", "background", "drop"))

#: The parameters of each notebook (name -> :class:`Param`), keyed by notebook name.
NOTEBOOK_SPECS: dict[str, dict[str, Param]] = {
    "00_quickstart": {
        **_COMMON,
        "DATASET_CONFIG": Param("config", optional=True, example="'my_data/fss_lab.json'"),
        "PROTOCOL": Param("choice", choices=("same_split", "cross_group"), optional=True),
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_EPISODES": Param("int", 1, optional=True, example="200"),
        "IMAGE_SIZE": Param("size", 8, optional=True),
        "BACKBONE": Param("str", example="'efficientnet_lite0'"),
        "LEVELS": Param("str_list", example="['s16_expanded']"),
        "TEMPERATURE": Param("float", 1e-6, example="20.0"),
    },
    "01_base_training": {
        **_COMMON, **_BASE,
        "NOVEL_POLICY": _POLICY,
        "CONTRASTIVE_WEIGHT": Param("float", 0, example="0.1"),
    },
    "02_gfss_finetuning_triplet": {
        **_COMMON, **_BASE,
        "SHOTS": Param("int_list", 1, example="[1, 5, 10]"),
        "N_RUNS": Param("int", 1, optional=True, example="5"),
        "MAX_QUERIES": Param("int", 1, optional=True, example="40"),
        "STEPS_LAST": Param("int", 1, example="100"),
        "STEPS_ALL": Param("int", 1, optional=True, example="100"),
        "TRIPLET_WEIGHT": Param("float", 0, example="0.1"),
        "TRIPLET_MARGIN": Param("float", 0, example="0.3"),
    },
    "03_contrastive_distillation": {
        **_COMMON, **_BASE,
        "CONTRASTIVE_WEIGHT": Param("float", 0, example="0.1"),
        "CONTRASTIVE_MAX_VIEWS": Param("int", 1, example="4"),
        "GAMMAS": Param("float_list", 0, example="[0.0, 1.0, 10.0]"),
        "SHOTS": Param("int", 1, example="1"),
        "N_EPISODES": Param("int", 1, optional=True, example="60"),
        "STEPS": Param("int", 1, example="100"),
    },
    "04_infomax_diam": {
        **_COMMON, **_BASE,
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_RUNS": Param("int", 1, optional=True, example="5"),
        "MAX_QUERIES": Param("int", 1, optional=True, example="40"),
        "ITERATIONS": Param("int", 1, example="100"),
        "NOVEL_POLICY": _POLICY,
        "N_EPISODES": Param("int", 1, optional=True, example="100"),
    },
    "05_attention_mmformer": {
        **_COMMON,
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_EPISODES": Param("int", 1, optional=True, example="100"),
        "PROPOSAL_COUNTS": Param("int_list", 2, optional=True, example="[25, 50, 100]"),
        "POS_ITERATIONS": Param("int", 1, optional=True, example="300"),
        "MM_ITERATIONS": Param("int", 1, optional=True, example="150"),
    },
    "06_eftnet_query_finetuning": {
        **_COMMON,
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_EPISODES": Param("int", 1, optional=True, example="40"),
        "ROUNDS": Param("int", 0, example="5"),
        "ABLATION_SHOTS": Param("int_list", 1, optional=True, example="[1]"),
        "OFFICIAL_S2Q": Param("bool", optional=True),
        "MM_EPISODES": Param("int", 1, optional=True, example="20"),
        "VIDEO_EPISODES": Param("int", 1, optional=True, example="30"),
        "META_MODEL_DIR": Param("path", example="'results/meta_models'"),
    },
    "07_your_own_images": {
        "DEVICE": Param("device", example="'auto'"),
        "SEED": Param("int", 0, example="0"),
        "QUICK": Param("bool"),
        "IMAGE_FOLDER": Param("path", optional=True, example="'my_photos'"),
        "METHODS": Param("str_list", example="['prototype', 'repri']"),
        "IMAGE_SIZE": Param("size", 32, optional=True),
        "REPRI_ITERATIONS": Param("int", 1, example="50"),
        "RESULTS_DIR": Param("path", example="'results/07_your_own_images'"),
    },
    "04b_bcm": {
        **_COMMON, **_BASE,
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_RUNS": Param("int", 1, optional=True, example="5"),
        "MAX_QUERIES": Param("int", 1, optional=True, example="40"),
        "ITERATIONS": Param("int", 1, example="100"),
        "NOVEL_POLICY": _POLICY,
        "BACKBONES": Param("str_list", optional=True, empty_ok=True,
                           example="['efficientnet_lite0', 'efficientnet_lite2']"),
        "BACKBONE_ITERATIONS": Param("int", 1, optional=True, example="100"),
    },
    "08_benchmark": {
        **_COMMON, **_BASE,
        "SHOTS": Param("int_list", 1, example="[1, 5]"),
        "N_EPISODES": Param("int", 1, optional=True, example="1000"),
        "N_RUNS": Param("int", 1, optional=True, example="5"),
        "MAX_QUERIES": Param("int", 1, optional=True, example="40"),
        "METHODS": Param("str_list", optional=True, example="['prototype', 'repri', 'diam']"),
        "META_MODEL_DIR": Param("path", example="'results/meta_models'"),
    },
}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def validate_parameters(namespace: Mapping[str, Any], spec: str | Mapping[str, Param]) -> dict[str, Any]:
    """Check a notebook's parameters and return them (JSON-able: tuples as lists, paths as strings).

    Args:
        namespace: the notebook's ``globals()`` after the parameters cell (and papermill's injected cell).
            Only UPPER_CASE names are parameters; everything else (imports, IPython's ``In``/``Out``) is ignored.
        spec: a key of :data:`NOTEBOOK_SPECS` (e.g. ``"00_quickstart"``) or a ``{name: Param}`` mapping.

    Returns:
        ``{name: value}`` for every parameter of the spec, in the spec's order.

    Raises:
        ParameterError: the first problem on the first line, then one line per further problem (wrong type or
            range, an unknown UPPER_CASE name with the closest valid one, a missing parameter, ``DATA_ROOT`` given
            for a dataset that ignores it, or missing / nonexistent for one that needs it); each names the parameter, the value and the fix.
        KeyError: an unknown notebook name (lists the known ones).
    """
    if isinstance(spec, str):
        if spec not in NOTEBOOK_SPECS:
            raise KeyError(f"no parameter spec for notebook {spec!r}; known: {sorted(NOTEBOOK_SPECS)}")
        title, spec = spec, NOTEBOOK_SPECS[spec]
    else:
        title = "notebook"
    problems = []
    names = [n for n in namespace if _NAME.match(n) and not callable(namespace[n])]
    for n in names:
        if n not in spec:
            close = difflib.get_close_matches(n, list(spec), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            problems.append(f"unknown parameter {n} = {namespace[n]!r}: {title} has no such parameter, so it would "
                            f"be ignored.{hint} Valid: {', '.join(spec)}.")
    for n, p in spec.items():
        if n not in namespace:
            problems.append(f"parameter {n} is not defined; the {title} parameters cell must set it.")
            continue
        msg = _check(n, namespace[n], p)
        if msg:
            problems.append(msg)
    dataset, root = namespace.get("DATASET"), namespace.get("DATA_ROOT")
    if "DATA_ROOT" in spec and dataset in DATASET_NAMES and not any(m.startswith("DATA_ROOT") for m in problems):
        if dataset in OFFLINE_DATASETS and root is not None:
            problems.append(f"DATA_ROOT = {str(root)!r} is given but DATASET = {dataset!r} is generated offline and "
                            "ignores it; set DATASET to the dataset in that folder (e.g. 'camvid') or "
                            "DATA_ROOT = None.")
        elif dataset not in OFFLINE_DATASETS and root is None:
            problems.append(f"DATASET = {dataset!r} needs DATA_ROOT, the folder holding it (see datasets/README.md); "
                            "e.g. -p DATA_ROOT ../shared/data/camvid.")
        elif dataset not in OFFLINE_DATASETS and not Path(root).is_dir():
            problems.append(f"DATA_ROOT = {str(root)!r} does not exist (or is not a folder) for DATASET = "
                            f"{dataset!r}; give the folder holding the dataset (a relative path starts at "
                            f"{Path.cwd()}).")
    if problems:
        more = f" ({len(problems) - 1} more below)" if len(problems) > 1 else ""
        raise ParameterError(f"{title}: {problems[0]}{more}" + "".join(f"\n  {m}" for m in problems[1:]))
    return {n: _jsonable(namespace[n]) for n in spec}
