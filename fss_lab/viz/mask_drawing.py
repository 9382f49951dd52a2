"""Draw a support mask offline: click superpixels to add or remove them, correct with a brush, undo, save a PNG.

Two granularities of superpixels (scikit-image SLIC by default, Felzenszwalb as an option) let a few clicks cover
an object (coarse) and then fix its border (fine). Everything the widget does goes through :class:`MaskDrawer`,
whose plain methods (``click``, ``brush``, ``undo``, ``save``) are the widget's headless twin, and
:func:`mask_from_superpixels` replays a list of clicks in one call (what notebook 07 does in CI)::

    >>> import skimage.data
    >>> from fss_lab.viz.mask_drawing import mask_from_superpixels
    >>> cat = skimage.data.chelsea()
    >>> mask = mask_from_superpixels(cat, [(150, 200), (100, 150), (250, 180)])
    >>> mask.dtype, mask.shape
    (dtype('bool'), (300, 451))

:func:`mask_drawing_widget` is the interactive version (ipycanvas; imported lazily, so this module imports
headless).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np

__all__ = ["superpixels", "mask_from_superpixels", "MaskDrawer", "mask_drawing_widget", "GRANULARITIES"]

#: superpixel settings per method and granularity (about 60 coarse and 300 fine SLIC regions on a photo)
GRANULARITIES = {
    "slic": {"coarse": dict(n_segments=60, compactness=10.0), "fine": dict(n_segments=300, compactness=10.0)},
    "felzenszwalb": {"coarse": dict(scale=400.0, sigma=0.8, min_size=200),
                     "fine": dict(scale=80.0, sigma=0.8, min_size=40)},
}

#: a click: ``(row, col)`` adds the superpixel under it; ``(row, col, "add" | "remove")`` says which;
#: ``(row, col, action, "coarse" | "fine")`` picks the granularity too
Click = Union[tuple[int, int], tuple[int, int, str], tuple[int, int, str, str]]


def superpixels(image: np.ndarray, method: str = "slic", granularity: str = "coarse", seed: int = 0) -> np.ndarray:
    """Superpixel ids of an RGB image.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        method: ``"slic"`` (Achanta et al., TPAMI 2012; ``skimage.segmentation.slic``, ``start_label=0``) or
            ``"felzenszwalb"`` (Felzenszwalb & Huttenlocher, IJCV 2004).
        granularity: ``"coarse"`` or ``"fine"`` (:data:`GRANULARITIES`).
        seed: unused by both algorithms (they are deterministic); kept so callers can record it.

    Returns:
        int32 ``[H, W]`` region ids ``0..R-1``.

    Raises:
        ValueError: unknown ``method`` / ``granularity`` (lists the valid ones), or an image that is not RGB.
    """
    from skimage.segmentation import felzenszwalb, slic

    if method not in GRANULARITIES:
        raise ValueError(f"method must be one of {list(GRANULARITIES)}, got {method!r}")
    if granularity not in GRANULARITIES[method]:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES[method])}, got {granularity!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    kw = GRANULARITIES[method][granularity]
    if method == "slic":
        seg = slic(image, start_label=0, channel_axis=-1, **kw)
    else:
        seg = felzenszwalb(image, channel_axis=-1, **kw)
    return seg.astype(np.int32)


def _parse_click(click: Sequence, shape: tuple[int, int]) -> tuple[int, int, bool, str]:
    if not isinstance(click, (tuple, list)) or not 2 <= len(click) <= 4:
        raise ValueError(f"a click is (row, col[, 'add'|'remove'[, 'coarse'|'fine']]), got {click!r}")
    y, x = int(click[0]), int(click[1])
    action = click[2] if len(click) > 2 else "add"
    gran = click[3] if len(click) > 3 else "coarse"
    if action not in ("add", "remove"):
        raise ValueError(f"click {click!r}: the action must be 'add' or 'remove', got {action!r}")
    if not (0 <= y < shape[0] and 0 <= x < shape[1]):
        raise ValueError(f"click {click!r} is outside the {shape[0]}x{shape[1]} (HxW) image; give (row, col)")
    return y, x, action == "add", gran


class MaskDrawer:
    """A support mask being drawn on ``image``: superpixel clicks, brush strokes, undo, save.

    This is the state behind :func:`mask_drawing_widget` and its headless twin: every widget action calls one of
    these methods.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (e.g. :func:`fss_lab.own_images.load_image` of a path).
        method: superpixel algorithm (:func:`superpixels`).
        mask: a starting mask (bool ``[H, W]``), default empty.

    Attributes:
        mask: bool ``[H, W]``, the current mask (``True`` = the support class).
        segments: ``{"coarse": int32 [H, W], "fine": int32 [H, W]}`` (computed on first use).
    """

    def __init__(self, image: np.ndarray, method: str = "slic", mask: np.ndarray | None = None):
        self.image = np.asarray(image)
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {self.image.shape}")
        self.method = method
        self.mask = np.zeros(self.image.shape[:2], bool) if mask is None else np.asarray(mask, bool).copy()
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(f"mask is {self.mask.shape}, the image {self.image.shape[:2]}: give a mask of the same size")
        self._segments: dict[str, np.ndarray] = {}
        self._history: list[np.ndarray] = []

    def segments(self, granularity: str = "coarse") -> np.ndarray:
        """int32 ``[H, W]`` superpixel ids at ``granularity`` (computed once)."""
        if granularity not in self._segments:
            self._segments[granularity] = superpixels(self.image, self.method, granularity)
        return self._segments[granularity]

    def _push(self) -> None:
        self._history.append(self.mask.copy())

    def click(self, row: int, col: int, add: bool = True, granularity: str = "coarse") -> np.ndarray:
        """Add (``add=True``) or remove the superpixel under pixel ``(row, col)``; returns :attr:`mask`.

        Raises:
            ValueError: a pixel outside the image.
        """
        y, x, _, _ = _parse_click((row, col), self.mask.shape)
        seg = self.segments(granularity)
        self._push()
        region = seg == seg[y, x]
        self.mask = self.mask | region if add else self.mask & ~region
        return self.mask

    def brush(self, row: float, col: float, radius: float = 8.0, add: bool = True) -> np.ndarray:
        """Paint (``add=True``) or erase a disc of ``radius`` pixels centred on ``(row, col)``; returns :attr:`mask`."""
        h, w = self.mask.shape
        if radius <= 0:
            raise ValueError(f"radius must be > 0 pixels, got {radius}")
        y0, y1 = max(0, int(row - radius)), min(h, int(row + radius) + 1)
        x0, x1 = max(0, int(col - radius)), min(w, int(col + radius) + 1)
        if y0 >= y1 or x0 >= x1:
            return self.mask
        self._push()
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (yy - row) ** 2 + (xx - col) ** 2 <= radius ** 2
        self.mask = self.mask.copy()
        self.mask[y0:y1, x0:x1][disc] = add
        return self.mask

    def undo(self) -> np.ndarray:
        """Undo the last click or brush stroke (nothing to undo: unchanged); returns :attr:`mask`."""
        if self._history:
            self.mask = self._history.pop()
        return self.mask

    def clear(self) -> np.ndarray:
        """Empty the mask (undoable)."""
        self._push()
        self.mask = np.zeros_like(self.mask)
        return self.mask

    def overlay(self, granularity: str | None = "coarse", alpha: float = 0.45) -> np.ndarray:
        """uint8 ``[H, W, 3]``: the image, the mask tinted orange, superpixel borders of ``granularity`` in white
        (``None``: no borders)."""
        out = self.image.astype(np.float32)
        if self.mask.any():
            out[self.mask] = (1 - alpha) * out[self.mask] + alpha * np.array([255.0, 127.0, 42.0])
        if granularity is not None:
            from skimage.segmentation import find_boundaries

            out[find_boundaries(self.segments(granularity), mode="inner")] = 255.0
        return np.clip(out, 0, 255).astype(np.uint8)

    def save(self, path: str | Path) -> Path:
        """Write :attr:`mask` as a 0 / 255 PNG (what :func:`fss_lab.segment` and ``fss-lab segment --mask`` read).

        Raises:
            ValueError: the mask is empty (nothing to segment with).
        """
        from PIL import Image

        if not self.mask.any():
            raise ValueError("the mask is empty: click the object's superpixels (or paint it) before saving")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.mask.astype(np.uint8) * 255).save(path)
        return path


def mask_from_superpixels(image: np.ndarray, clicks: Sequence[Click], *, method: str = "slic",
                          strokes: Sequence[tuple[float, float, float, bool]] = ()) -> np.ndarray:
    """The plain-function twin of :func:`mask_drawing_widget`: replay ``clicks`` (then brush ``strokes``).

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        clicks: ``(row, col)`` (add the coarse superpixel there), ``(row, col, "add" | "remove")`` or
            ``(row, col, action, "coarse" | "fine")``, applied in order.
        method: superpixel algorithm (:func:`superpixels`).
        strokes: brush dabs ``(row, col, radius, add)`` applied after the clicks.

    Returns:
        bool ``[H, W]`` mask.

    Raises:
        ValueError: a malformed click or one outside the image (names it).
    """
    drawer = MaskDrawer(image, method)
    for c in clicks:
        y, x, add, gran = _parse_click(c, drawer.mask.shape)
        drawer.click(y, x, add, gran)
    for row, col, radius, add in strokes:
        drawer.brush(row, col, radius, add)
    return drawer.mask


def mask_drawing_widget(image: np.ndarray, save_path: str | Path = "support_mask.png", method: str = "slic",
                        max_display: int = 640):
    """An interactive mask editor (JupyterLab; ipycanvas + ipywidgets, offline).

    Click a region to add it (or remove it, in "remove region" mode) at the chosen granularity; "brush +/-" paints
    or erases discs while the mouse is dragged; Undo, Clear, and Save (a 0 / 255 PNG at ``save_path``).

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        save_path: default file of the Save button (editable in the widget).
        method: superpixel algorithm.
        max_display: the canvas is shown at most this many pixels wide (the mask keeps the image's size).

    Returns:
        ``(widget, drawer)``: display ``widget``; ``drawer.mask`` is the current mask (a :class:`MaskDrawer`).

    Raises:
        ImportError: ipycanvas or ipywidgets is missing (``pip install ipycanvas``); use
            :func:`mask_from_superpixels` instead.
    """
    import ipywidgets as W
    from ipycanvas import Canvas

    drawer = MaskDrawer(image, method)
    h, w = drawer.mask.shape
    canvas = Canvas(width=w, height=h, layout=W.Layout(width=f"{min(w, max_display)}px", height="auto"))
    mode = W.ToggleButtons(options=["add region", "remove region", "brush +", "brush -"], value="add region")
    gran = W.ToggleButtons(options=["coarse", "fine"], value="coarse", description="superpixels")
    radius = W.IntSlider(value=max(3, min(h, w) // 40), min=1, max=max(4, min(h, w) // 8), description="brush px")
    undo, clear, save = W.Button(description="Undo"), W.Button(description="Clear"), W.Button(description="Save")
    path = W.Text(value=str(save_path), description="file")
    status = W.HTML()
    state = {"down": False}

    def redraw(*_):
        canvas.put_image_data(drawer.overlay(gran.value), 0, 0)
        status.value = f"{int(drawer.mask.sum())} pixels ({100 * drawer.mask.mean():.1f} %) in the mask"

    def act(x, y):
        row, col = min(h - 1, max(0, int(y))), min(w - 1, max(0, int(x)))
        if mode.value.startswith("brush"):
            drawer.brush(row, col, radius.value, mode.value == "brush +")
        else:
            drawer.click(row, col, mode.value == "add region", gran.value)
        redraw()

    def on_down(x, y):
        state["down"] = True
        act(x, y)

    def on_move(x, y):
        if state["down"] and mode.value.startswith("brush"):
            act(x, y)

    def on_up(x, y):
        state["down"] = False

    def on_save(_):
        try:
            status.value = f"saved {drawer.save(path.value)}"
        except ValueError as exc:
            status.value = f"<b>{exc}</b>"

    canvas.on_mouse_down(on_down)
    canvas.on_mouse_move(on_move)
    canvas.on_mouse_up(on_up)
    undo.on_click(lambda _: (drawer.undo(), redraw()))
    clear.on_click(lambda _: (drawer.clear(), redraw()))
    save.on_click(on_save)
    gran.observe(redraw, names="value")
    redraw()
    ui = W.VBox([W.HBox([mode, gran]), W.HBox([radius, undo, clear]), canvas, W.HBox([path, save]), status])
    return ui, drawer
