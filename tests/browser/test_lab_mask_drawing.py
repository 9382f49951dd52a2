"""Notebook 07's mask-drawing widget in a real JupyterLab (headless Chromium): clicks on its ipycanvas change the mask.

Opens ``07_your_own_images`` in Lab, runs the cells up to and including the widget cell (the segmentation cells
after it are what the papermill test covers), then with the mouse: clicks two superpixels of Chelsea (the widget's
readout must give exactly the pixel count of those regions, as the headless twin computes them), Undo (back to the
first region), switches to "remove region" and removes it (0 pixels), Undo again, and Save: the PNG the widget
writes must equal :func:`fss_lab.viz.mask_drawing.mask_from_superpixels` of the same click. Then a "brush +" drag
(mouse-move events) adds pixels and Clear empties the mask. Screenshots land in ``results/tests/browser/``.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.browser.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NAME = "07_your_own_images"
WIDGET_CELL = "mask_drawing_widget(support_image"  # the source of the cell that displays the widget


def _interior_point(segments: np.ndarray, near: tuple[int, int]) -> tuple[int, int]:
    """The pixel of the superpixel under ``near`` farthest from its border (so a click lands in it for sure)."""
    from scipy.ndimage import distance_transform_edt

    region = segments == segments[near]
    dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def _pixels(status) -> int:
    text = status.inner_text()
    m = re.match(r"(\d+) pixels", text)
    assert m, f"unexpected widget readout {text!r}"
    return int(m.group(1))


def test_mask_drawing_widget_in_jupyterlab(lab, browser):
    import skimage.data
    from PIL import Image

    from fss_lab.viz.mask_drawing import mask_from_superpixels, superpixels

    image = skimage.data.chelsea()  # notebook 07's default support photo
    h, w = image.shape[:2]
    seg = superpixels(image, "slic", "coarse")
    a = _interior_point(seg, (150, 200))  # the cat's body
    b = _interior_point(seg, (40, 60))  # another region (top left)
    assert seg[a] != seg[b]
    n_a, n_ab = int((seg == seg[a]).sum()), int(np.isin(seg, [seg[a], seg[b]]).sum())

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page_errors = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(lab.notebook_url(f"{NAME}.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'",
                           timeout=60_000)
    index = page.evaluate(
        """(needle) => {
            const nb = window.jupyterapp.shell.currentWidget.content;
            const i = nb.widgets.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(needle));
            nb.activeCellIndex = i;
            return i;
        }""", WIDGET_CELL)
    assert index > 0, f"no cell of {NAME} contains {WIDGET_CELL!r}"
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-above')")
    page.wait_for_function(
        """(i) => {
            const nb = window.jupyterapp.shell.currentWidget;
            const cells = nb.content.widgets.slice(0, i).filter(c => c.model.type === 'code');
            return nb.sessionContext.kernelDisplayStatus === 'idle' && cells.every(c => c.model.executionCount !== null);
        }""", arg=index, timeout=180_000, polling=500)
    page.evaluate("(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i; }", index)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(
        page.evaluate("(i) => window.jupyterapp.shell.currentWidget.content.widgets.slice(0, i)"
                      ".filter(c => c.model.type === 'code').length", index))
    assert cell.locator(".jp-OutputArea-output:has-text('Traceback')").count() == 0
    canvas = cell.locator(".jupyter-widgets canvas").first
    canvas.wait_for(state="visible", timeout=90_000)
    assert page.locator(".jp-OutputArea-output:has-text('Loading widget...')").count() == 0
    assert page.locator(".jp-OutputArea-output:has-text('Error displaying widget')").count() == 0
    status = cell.locator(".widget-html-content").last
    page.wait_for_function("(el) => /^0 pixels/.test(el.innerText)", arg=status.element_handle(), timeout=30_000)
    # the canvas is the image's size in pixels (shown at most 640 px wide); ipycanvas maps CSS px back to them
    assert canvas.evaluate("c => [c.width, c.height]") == [w, h]

    def canvas_box():
        """The canvas's box on the page now (buttons scroll the page, so never reuse an old one)."""
        canvas.scroll_into_view_if_needed()
        return canvas.bounding_box()

    def click(point, count):
        r, c = point
        box = canvas_box()
        page.mouse.click(box["x"] + (c + 0.5) * box["width"] / w, box["y"] + (r + 0.5) * box["height"] / h)
        page.wait_for_function("([el, n]) => el.innerText.startsWith(n + ' pixels')",
                               arg=[status.element_handle(), count], timeout=30_000)
        assert _pixels(status) == count

    def button(label):
        return cell.locator(f"button:has-text('{label}')").first

    click(a, n_a)
    click(b, n_ab)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{NAME}_widget_two_clicks.png"))
    button("Undo").click()
    page.wait_for_function("([el, n]) => el.innerText.startsWith(n + ' pixels')",
                           arg=[status.element_handle(), n_a], timeout=30_000)
    button("remove region").click()
    click(a, 0)
    button("Undo").click()
    page.wait_for_function("([el, n]) => el.innerText.startsWith(n + ' pixels')",
                           arg=[status.element_handle(), n_a], timeout=30_000)
    button("Save").click()
    page.wait_for_function("(el) => el.innerText.startsWith('saved ')", arg=status.element_handle(), timeout=30_000)
    saved = status.inner_text()[len("saved "):].strip()
    path = (lab.root / saved) if not saved.startswith("/") else type(lab.root)(saved)
    drawn = np.asarray(Image.open(path)) > 0
    np.testing.assert_array_equal(drawn, mask_from_superpixels(image, [a]))
    # brush +: a drag paints discs along the path (mouse-move events), outside region a; then Clear empties the mask
    button("brush +").click()
    r0, c0 = int(h * 0.85), int(w * 0.05)
    box = canvas_box()
    page.mouse.move(box["x"] + c0 * box["width"] / w, box["y"] + r0 * box["height"] / h)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(box["x"] + (c0 + 10 * step) * box["width"] / w, box["y"] + r0 * box["height"] / h)
    page.mouse.up()
    page.wait_for_function("([el, n]) => /^\\d+ pixels/.test(el.innerText) && parseInt(el.innerText) > n + 100",
                           arg=[status.element_handle(), n_a], timeout=30_000)
    canvas.screenshot(path=str(ARTIFACTS / f"{NAME}_widget_canvas.png"))
    button("Clear").click()
    page.wait_for_function("(el) => /^0 pixels/.test(el.innerText)", arg=status.element_handle(), timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{NAME}_widget_saved.png"))
    assert page_errors == [], page_errors
    page.close()
