"""Segment your own images: support photos + their masks + new photos -> masks, in one call.

    >>> import fss_lab                                                        # doctest: +SKIP
    >>> out = fss_lab.segment("cat.jpg", "cat_mask.png", ["q1.jpg", "q2.jpg"])  # doctest: +SKIP
    >>> out[0].mask.shape, out[0].probability.dtype                           # doctest: +SKIP
    ((480, 640), dtype('float32'))

What happens (the same steps the FSS experiments take, :mod:`fss_lab.experiments.fss`): every image is read as RGB
with its EXIF orientation applied; all images go through one :class:`~fss_lab.data.PairTransform`
(``"long_side_pad"``: the long side scaled to fit, aspect ratio kept, black padding bottom/right, labelled 255 so
it never counts) normalised with the backbone's own mean/std; a frozen backbone gives the features; a registered
1-way method (:func:`fss_lab.methods.list_methods`) is fitted on the support features and masks and predicts the
queries; its probabilities are cropped to the un-padded content and resized bilinearly (``align_corners=False``)
back to each query's original size, where the mask is their argmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .labels import IGNORE_INDEX

__all__ = ["Segmentation", "SegmentInputError", "segment", "load_image", "load_mask", "load_model", "auto_image_size",
           "dataset_image_size"]

ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image", torch.Tensor]  # noqa: F821


class SegmentInputError(ValueError):
    """An image or mask given to :func:`segment` that cannot be used; the message names which one and the fix."""


@dataclass
class Segmentation:
    """The segmentation of one query image, at its original size (after EXIF orientation).

    Attributes:
        mask: bool ``[H0, W0]``, ``True`` where the support class wins the argmax of the class probabilities
            (for 1-way methods: probability > 0.5).
        probability: float32 ``[H0, W0]`` in ``[0, 1]``, the foreground probability (softmax of the method's
            logits over background / foreground).
        image: uint8 ``[H0, W0, 3]`` RGB, the query as read.
        overlay: uint8 ``[H0, W0, 3]`` the query with the mask tinted and outlined (``overlays=True``), else ``None``.
        name: the query's file stem, or ``query<i>`` for arrays.
    """

    mask: np.ndarray
    probability: np.ndarray
    image: np.ndarray
    overlay: np.ndarray | None = None
    name: str = ""

    def iou(self, truth: np.ndarray) -> float:
        """Foreground IoU of :attr:`mask` with a binary ``truth`` ``[H0, W0]`` (nonzero = foreground; 255 ignored);
        ``nan`` when both are empty."""
        truth = np.asarray(truth)
        valid = truth != IGNORE_INDEX
        t = (truth != 0) & valid
        p = self.mask & valid
        union = int((t | p).sum())
        return float("nan") if union == 0 else float((t & p).sum()) / union


def _pil():
    from PIL import Image, ImageOps

    return Image, ImageOps


def load_image(image: ImageLike, what: str = "image") -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` RGB.

    Args:
        image: a path (read with :func:`fss_lab.data.base.read_rgb`, EXIF orientation applied), a PIL image (EXIF
            orientation applied, converted to RGB), a uint8 array ``[H, W, 3]`` / ``[H, W, 4]`` (alpha dropped) /
            ``[H, W]`` (grey), a float array in ``[0, 1]``, or a float tensor ``[3, H, W]`` in ``[0, 1]``.
        what: the name used in error messages (e.g. ``"query 2"``).

    Raises:
        SegmentInputError: a missing file, or an array of another shape or range (names ``what``).
    """
    Image, ImageOps = _pil()
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise SegmentInputError(f"{what}: file not found: {image}")
        from .data.base import read_rgb

        try:
            return read_rgb(image)
        except Exception as exc:  # DatasetError / PIL errors: say which file
            raise SegmentInputError(f"{what}: cannot read {image} as an image ({exc})") from None
    if isinstance(image, Image.Image):
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise SegmentInputError(f"{what}: expected a path, a PIL image or an array, got {type(image).__name__}")
    a = image
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise SegmentInputError(f"{what}: expected an RGB image [H, W, 3], got an array of shape {image.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
                raise SegmentInputError(f"{what}: a float image must hold values in [0, 1], got "
                                        f"[{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]; pass uint8 0..255 or divide by 255")
            a = np.round(a * 255)
        elif a.size and (a.min() < 0 or a.max() > 255):
            raise SegmentInputError(f"{what}: integer pixel values must be in 0..255, got [{a.min()}, {a.max()}]")
        a = a.astype(np.uint8)
    if min(a.shape[:2]) < 1:
        raise SegmentInputError(f"{what}: empty image of shape {a.shape}")
    return np.ascontiguousarray(a)


def load_mask(mask: ImageLike, what: str = "mask", class_id: int | None = None) -> np.ndarray:
    """A support mask as uint8 ``[H, W]`` in ``{0, 1, 255}`` (background / foreground / ignore).

    Accepted: a path (PNG; EXIF orientation applied, as for its photo), a PIL image, a bool / integer array, or an
    RGB(A) drawing (any non-black pixel is foreground). Values:

    * bool, ``{0, 1}`` or ``{0, 255}`` (the usual black/white mask): nonzero is foreground;
    * class-id masks (several nonzero values): pass ``class_id``; that id is foreground, 255 stays ignore,
      every other id is background.

    Raises:
        SegmentInputError: a missing file, a class-id mask without ``class_id`` (lists its values), a mask with no
            foreground pixel (names ``what``).
    """
    Image, ImageOps = _pil()
    if isinstance(mask, (str, Path)):
        if not Path(mask).is_file():
            raise SegmentInputError(f"{what}: file not found: {mask}")
        with Image.open(mask) as im:
            m = _pil_mask(ImageOps.exif_transpose(im), what)
    elif isinstance(mask, Image.Image):
        m = _pil_mask(ImageOps.exif_transpose(mask), what)
    elif isinstance(mask, torch.Tensor):
        m = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        m = mask
    else:
        raise SegmentInputError(f"{what}: expected a path, a PIL image or an array, got {type(mask).__name__}")
    if m.ndim == 3 and m.shape[2] in (3, 4):
        m = _drawing_to_mask(m[..., :3], what)
    if m.ndim != 2:
        raise SegmentInputError(f"{what}: expected a mask [H, W], got shape {m.shape}")
    if m.dtype == bool:
        out = m.astype(np.uint8)
    else:
        if np.issubdtype(m.dtype, np.floating):
            if not np.all(np.isin(m, (0.0, 1.0))):
                raise SegmentInputError(f"{what}: a float mask must hold only 0 and 1; threshold it first "
                                        "(e.g. mask > 0.5)")
            m = m.astype(np.uint8)
        values = set(np.unique(m).tolist())
        if class_id is not None:
            if class_id not in values:
                raise SegmentInputError(f"{what}: class_id {class_id} does not occur in the mask; its values are "
                                        f"{sorted(values)[:20]}")
            out = (m == class_id).astype(np.uint8)
            out[(m == IGNORE_INDEX) & (class_id != IGNORE_INDEX)] = IGNORE_INDEX
        elif values <= {0, 1} or values <= {0, 255}:
            out = (m != 0).astype(np.uint8)
        else:
            raise SegmentInputError(f"{what}: holds values {sorted(values)[:20]}, not a binary mask; pass "
                                    "class_id=<the support class's value> (other values become background, 255 "
                                    "ignore)")
    if not (out == 1).any():
        raise SegmentInputError(f"{what}: the mask has no foreground pixel; draw the object (nonzero pixels) or "
                                "check that the right file was given")
    return out


def _pil_mask(im, what: str) -> np.ndarray:
    """A PIL mask as an array: ``L``/``P``/``I``/``1`` as stored, colour drawings via :func:`_drawing_to_mask`."""
    if im.mode in ("RGB", "RGBA", "CMYK", "LA"):
        return _drawing_to_mask(np.asarray(im.convert("RGB")), what)
    return np.asarray(im).copy()


def _drawing_to_mask(rgb: np.ndarray, what: str) -> np.ndarray:
    """A colour drawing (black background, any bright colour for the object) as bool ``[H, W]``.

    Raises:
        SegmentInputError: more than 5 % of the pixels are mid-tones, i.e. this looks like a photo, not a mask.
    """
    grey = rgb.max(axis=2)
    if ((grey > 32) & (grey < 224)).mean() > 0.05:
        raise SegmentInputError(f"{what}: this looks like a photo, not a mask (many mid-tone pixels); a mask is black "
                                "(background) and white or one bright colour (the object), e.g. saved by "
                                "fss_lab.viz.mask_drawing")
    return grey >= 128


def auto_image_size(shapes: Sequence[tuple[int, int]], long_side: int = 320, multiple: int = 16) -> tuple[int, int]:
    """The network input ``(H, W)`` for images of ``shapes`` ``[(H0, W0), ...]``: the long side ``long_side``
    pixels, the short side from the median aspect ratio, rounded to a multiple of ``multiple`` (the backbone's
    stride), so square photos get a square input and landscape photos a landscape one (little padding)."""
    ratios = sorted(h / w for h, w in shapes)
    r = ratios[len(ratios) // 2]
    short = max(multiple, int(round(long_side * min(r, 1 / r) / multiple)) * multiple)
    return (long_side, short) if r > 1 else (short, long_side)


def dataset_image_size(dataset, long_side: int = 320, max_images: int = 50) -> tuple[int, int]:
    """:func:`auto_image_size` for a folder dataset, from the headers of its first ``max_images`` images (EXIF
    orientation counted): square photos get a square network input instead of a 240x320 one padded by 25 %.

    Args:
        dataset: a :class:`~fss_lab.data.folder.FolderDataset` (anything with ``_paths(i) -> (image, label)``).
    """
    from .data.base import image_size

    n = min(len(dataset), max_images)
    return auto_image_size([image_size(dataset._paths(i)[0]) for i in range(n)], long_side=long_side)


@lru_cache(maxsize=4)
def _backbone(name: str):
    from .models.backbones import create_backbone

    return create_backbone(name)


def _as_list(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return list(x)
    return [x]


def _name(x: Any, i: int, kind: str) -> str:
    return Path(x).stem if isinstance(x, (str, Path)) else f"{kind}{i}"


#: what a method that reads a trained model's features needs (the error message of :func:`segment`)
_MODEL_HELP = ("pass model=<the trained base model>: a PSPNet, the BaseModel of "
               "fss_lab.experiments.base_model.get_base_model(...), or the path of its checkpoint (written by "
               "`fss-lab train-base CONFIG` or cached in notebooks/results/base_models/)")


def _model_levels(levels: Sequence[str]) -> list[str]:
    """The levels of ``levels`` computed by a trained model (``"bottleneck"`` / ``"backbone"``)."""
    from .methods.base import FEATURE_SOURCES

    return [lv for lv in levels if lv in FEATURE_SOURCES]


def load_model(model: Any):
    """The trained segmentation model behind ``model=`` of :func:`segment`, in eval mode.

    Args:
        model: a :class:`~fss_lab.models.pspnet.PSPNet` (or any module with ``features`` / ``backbone_features`` /
            ``preprocessing`` and a 1x1 ``classifier``), a :class:`~fss_lab.experiments.base_model.BaseModel`, or
            the path of a PSPNet checkpoint (:func:`fss_lab.engine.checkpoint.load_pspnet`).

    Raises:
        SegmentInputError: a missing or unreadable checkpoint file, or an object that is none of these.
    """
    from torch import nn

    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise SegmentInputError(f"model: checkpoint not found: {model}; {_MODEL_HELP}")
        from .engine.checkpoint import CheckpointError, load_pspnet

        try:
            return load_pspnet(model)
        except CheckpointError as exc:
            raise SegmentInputError(f"model: cannot load {model} as a trained PSPNet ({exc})") from None
    if hasattr(model, "model") and isinstance(getattr(model, "model"), nn.Module) and hasattr(model, "class_map"):
        model = model.model  # a BaseModel
    if isinstance(model, nn.Module) and all(hasattr(model, a) for a in ("features", "preprocessing", "classifier")):
        return model.eval()
    raise SegmentInputError(f"model: expected a trained PSPNet, a BaseModel or a checkpoint path, got "
                            f"{type(model).__name__}; {_MODEL_HELP}")


def _method(method: Any, method_kwargs: Mapping[str, Any] | None, model: Any, backbone: Any):
    """The method instance :func:`segment` runs, built from a registered name (with the trained ``model`` for
    methods that read its features) or checked when given as an instance."""
    from .methods import Method, create_method, list_methods, method_class

    kwargs = dict(method_kwargs or {})
    if isinstance(method, Method):
        if kwargs:
            raise SegmentInputError(f"method_kwargs {sorted(kwargs)} are for a method given by name; method is "
                                    f"already a {type(method).__name__} instance: set them when you build it")
        m = method
    else:
        try:
            cls = method_class(method)
        except KeyError:
            raise SegmentInputError(f"unknown method {method!r}; 1-way methods on frozen features: "
                                    f"{_frozen_methods()}; with model=: {_model_methods()}") from None
        if cls.episodic_training:
            raise SegmentInputError(
                f"method {method!r} is a network meta-trained on base-class episodes, and a name gives an untrained "
                f"one: meta-train it (fss_lab.engine.episodic.train_episodic, notebook 05/06) and pass the trained "
                f"instance, method=<the learner>; training-free methods: {_frozen_methods()}")
        if _model_levels(cls.feature_levels):
            if model is None:
                raise SegmentInputError(f"method {method!r} reads the {list(cls.feature_levels)} features and the "
                                        f"classifier of a trained base model; {_MODEL_HELP}")
            kwargs.setdefault("model", model)
        elif method == "pfenet-prior":
            kwargs.setdefault("backbone", backbone)  # its layer-3 -> layer-4 path must be the features' backbone
        m = create_method(method, **kwargs)
    if not ("fss" in m.label_spaces or ("gfss" in m.label_spaces and model is not None)):
        raise SegmentInputError(f"method {m.name!r} handles GFSS tasks only: it needs the base classes of a trained "
                                f"model; {_MODEL_HELP}. 1-way methods: {list_methods('fss')}")
    if _model_levels(m.feature_levels) and model is None:
        raise SegmentInputError(f"method {m.name!r} reads the {list(m.feature_levels)} features of a trained model, "
                                f"which segment() computes only from that model; {_MODEL_HELP}")
    if m.episodic_training and getattr(m, "network", None) is None:
        raise SegmentInputError(f"method {m.name!r} has no trained network: meta-train it first "
                                "(fss_lab.engine.episodic.train_episodic) and pass the trained instance")
    return m


def _frozen_methods() -> list[str]:
    from .methods import list_methods, method_class

    return [n for n in list_methods("fss") if not _model_levels(method_class(n).feature_levels)
            and not method_class(n).episodic_training]


def _model_methods() -> list[str]:
    from .methods import list_methods, method_class

    return [n for n in list_methods() if _model_levels(method_class(n).feature_levels)]


def segment(
    support_images: ImageLike | Sequence[ImageLike],
    support_masks: ImageLike | Sequence[ImageLike],
    query_images: ImageLike | Sequence[ImageLike],
    *,
    method: str | Any = "prototype",
    method_kwargs: Mapping[str, Any] | None = None,
    model: Any = None,
    backbone: str | Any | None = None,
    levels: Sequence[str] = ("s16_expanded",),
    image_size: tuple[int, int] | None = None,
    class_id: int | None = None,
    device: str = "auto",
    overlays: bool = False,
    batch_size: int = 8,
) -> list[Segmentation]:
    """Segment the support masks' class in new images (1-way K-shot FSS on your own photos).

    Three kinds of methods run:

    * **training-free, on frozen backbone features** (``"prototype"``, ``"repri"``, ``"binary-ft"``, and the
      multi-level ``"pfenet-prior"`` / ``"mmformer-heuristic"``, whose levels and SLIC proposals are computed
      here): give a name, or an instance;
    * **methods that read a trained base model** (DIaM, BCM, GFSS prototype, fine-tuning; their
      ``feature_levels`` name ``"bottleneck"`` / ``"backbone"``): give ``model=`` (a PSPNet, a ``BaseModel`` or a
      checkpoint path) and the name, e.g. ``method="diam", model="base.pt"``, or an instance built on that model
      (``method=DIaM(model), model=model``). GFSS-only methods then run a GFSS task: the model's B base classes
      plus the support's class as novel class ``B + 1``; the returned mask is where that class wins the argmax
      over all ``1 + B + 1`` classes (base objects are not called foreground) and the probability is its softmax;
    * **meta-trained networks** (``"pfenet-meta"``, ``"mmformer"``: ``episodic_training``): give the trained
      instance (after :func:`fss_lab.engine.episodic.train_episodic`), built on the same ``backbone``.

    Args:
        support_images: K support images (paths, PIL images or arrays; see :func:`load_image`); one is fine.
        support_masks: their K masks, same order and size (see :func:`load_mask`: binary, or class ids with
            ``class_id``).
        query_images: Q images to segment, of any size and aspect ratio.
        method: a registered method name (above) or a :class:`~fss_lab.methods.Method` instance.
        method_kwargs: keywords for :func:`~fss_lab.methods.create_method` of a named method (e.g.
            ``{"adapt_iter": 50}``, ``{"iterations": 100}``).
        model: the trained base model for methods that read its features (:func:`load_model`: a PSPNet, a
            :class:`~fss_lab.experiments.base_model.BaseModel` or a checkpoint path); moved to ``device``. Its
            backbone's mean/std normalise the images.
        backbone: a registered backbone name or a :class:`~fss_lab.models.backbones.Backbone` (its
            ``preprocessing`` mean/std normalise the images); default ``"efficientnet_lite0"``, or the model's own
            backbone when ``model`` is given.
        levels: backbone feature levels of single-level methods (the FSS experiments' default:
            ``("s16_expanded",)``); a method that declares ``feature_levels`` gets those.
        image_size: ``(H, W)`` network input in pixels; ``None``: :func:`auto_image_size` of all images (long side
            320, square for square photos).
        class_id: for class-id masks, the value of the support class.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overlays: also return :attr:`Segmentation.overlay` images.
        batch_size: images per forward pass.

    Returns:
        one :class:`Segmentation` per query, in order, at the query's original size (after EXIF orientation).

    Raises:
        SegmentInputError: no images, a different number of support images and masks, a mask whose size differs
            from its image's, a mask without foreground, an unknown or unsuitable method, a method that needs a
            trained model without ``model=`` (names what to pass), an untrained meta-learner, ``model`` and
            ``backbone`` both given (each names the input and the fix).
    """
    from .data import PairTransform
    from .engine.device import resolve_device
    from .labels import LabelSpace
    from .methods import Task
    from .models.features import FeatureExtractor, ModelFeatures
    from .models.proposal_features import PROPOSAL_LEVEL, ProposalExtractor

    sup_in, mask_in, qry_in = _as_list(support_images), _as_list(support_masks), _as_list(query_images)
    if not sup_in or not qry_in:
        raise SegmentInputError("give at least one support image (with its mask) and one query image")
    if len(sup_in) != len(mask_in):
        raise SegmentInputError(f"{len(sup_in)} support images but {len(mask_in)} support masks; give one mask per "
                                "support image, in the same order")
    dev = resolve_device(device)
    net_model = None if model is None else load_model(model).to(dev)
    if net_model is not None and backbone is not None:
        raise SegmentInputError("give backbone= or model=, not both: the model's own backbone computes the features "
                                "it was trained on")
    if net_model is not None:
        net = net_model.backbone
    else:
        net = _backbone(backbone or "efficientnet_lite0") if isinstance(backbone, (str, type(None))) else backbone
    m = _method(method, method_kwargs, net_model, net)
    sup = [load_image(x, f"support image {i} ({_name(x, i, 'support')})") for i, x in enumerate(sup_in)]
    masks = [load_mask(x, f"support mask {i} ({_name(x, i, 'mask')})", class_id) for i, x in enumerate(mask_in)]
    for i, (im, mk) in enumerate(zip(sup, masks)):
        if im.shape[:2] != mk.shape:
            raise SegmentInputError(
                f"support mask {i} is {mk.shape[0]}x{mk.shape[1]} (HxW) but its image is {im.shape[0]}x{im.shape[1]}"
                "; draw the mask on the same image (EXIF orientation applied), or resize it with nearest neighbour")
    qry = [load_image(x, f"query {i} ({_name(x, i, 'query')})") for i, x in enumerate(qry_in)]
    size = tuple(image_size) if image_size else auto_image_size([a.shape[:2] for a in sup + qry])
    pre = net_model.preprocessing if net_model is not None else net.preprocessing
    transform = PairTransform(size, "long_side_pad", tuple(pre.mean), tuple(pre.std))

    def extractor(level: str):
        if level in _model_levels((level,)):
            return ModelFeatures(net_model, level)
        if level == PROPOSAL_LEVEL:
            return ProposalExtractor()
        return FeatureExtractor(net, levels=(level,), device=dev)

    if m.feature_levels:  # the levels the method declares, each computed by its own source
        extractors = {lv: extractor(lv) for lv in m.feature_levels}
    else:  # a single-level method: one extractor of ``levels`` (several are concatenated), named after the first
        extractors = {levels[0]: FeatureExtractor(net, levels=tuple(levels), device=dev)}

    def features(images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        x = torch.stack([transform.image(a) for a in images])
        return {lv: torch.cat([ex(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).to(dev)
                for lv, ex in extractors.items()}

    sup_labels = torch.stack([transform.label(mk) for mk in masks]).to(dev)
    if not bool((sup_labels == 1).flatten(1).any(1).all()):
        empty = [i for i in range(len(masks)) if not bool((sup_labels[i] == 1).any())]
        raise SegmentInputError(f"support mask(s) {empty}: the foreground vanishes at the {size[0]}x{size[1]} input; "
                                "draw a larger object or pass a larger image_size")
    if "fss" in m.label_spaces:
        space, fg = LabelSpace.fss(), 1
    else:  # a GFSS method on a trained model: its base classes + the support's class as the one novel class
        from .ops import classifier_rows

        num_base = int(classifier_rows(net_model)[0].shape[0]) - 1
        space, fg = LabelSpace(num_base, 1), num_base + 1
        sup_labels = torch.where(sup_labels == 1, torch.full_like(sup_labels, fg), sup_labels)
    valid = torch.zeros(len(qry), *size, dtype=torch.bool, device=dev)
    for i, a in enumerate(qry):
        h, w = transform.resized_size(*a.shape[:2])
        valid[i, :h, :w] = True
    task = Task(features(sup), sup_labels, features(qry), space, shots=len(sup), size=size, query_valid=valid,
                meta={"call": "segment"})
    with torch.enable_grad():
        logits = m.fit(task).predict(task)  # transductive methods (RePRI, DIaM) see the queries in fit
    logits = logits.detach().float()
    if bool((logits >= 0).all()) and torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4):
        prob = logits  # a method that returns probabilities (MM-Former's matching: [1 - M, M]); softmax would flatten
    else:
        prob = torch.softmax(logits, dim=1)  # [Q, C, H, W]
    out = []
    for i, a in enumerate(qry):
        h0, w0 = a.shape[:2]
        h, w = transform.resized_size(h0, w0)
        p = F.interpolate(prob[i:i + 1, :, :h, :w], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        mask = (p.argmax(0) == fg).cpu().numpy()
        p = p[fg].clamp_(0, 1).cpu().numpy().astype(np.float32)
        seg = Segmentation(mask=mask, probability=p, image=a, name=_name(qry_in[i], i, "query"))
        if overlays:
            seg.overlay = make_overlay(a, seg.mask)
        out.append(seg)
    return out


def make_overlay(image: np.ndarray, mask: np.ndarray, dim: float = 0.35,
                 color: tuple[int, int, int] = (0, 230, 255)) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``image`` with the background dimmed to ``dim`` of its brightness and a 2-pixel
    outline of ``mask`` in ``color`` (cyan: visible on most photos, whatever the object's colour)."""
    from skimage.segmentation import find_boundaries

    m = np.asarray(mask).astype(bool)
    out = image.astype(np.float32)
    out[~m] *= dim
    edge = find_boundaries(m, mode="thick")
    out[edge] = color
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_segmentations(segmentations: Sequence[Segmentation], out_dir: str | Path) -> list[Path]:
    """Write ``<name>_mask.png`` (0 / 255) and, where present, ``<name>_overlay.png`` for each segmentation.

    Returns:
        the paths written, in order (a repeated name gets a ``_<i>`` suffix).
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for i, s in enumerate(segmentations):
        name = s.name or f"query{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        p = out_dir / f"{name}_mask.png"
        Image.fromarray(s.mask.astype(np.uint8) * 255).save(p)
        written.append(p)
        if s.overlay is not None:
            p = out_dir / f"{name}_overlay.png"
            Image.fromarray(s.overlay).save(p)
            written.append(p)
    return written


__all__ += ["make_overlay", "save_segmentations"]
