"""The quickstart in a real JupyterLab (headless Chromium): run all cells, then check what a student sees.

Asserts: no error output; the figures are ``<img>`` elements (one per figure the notebook shows); the episode
browser widget renders (not "Loading widget...") and moving its slider changes its image; the exercise hints are
collapsed ``<details>``; and the saved notebook, after the nbstripout filter, is byte-identical to the committed
one (opening and running leaves git clean). Screenshots land in ``results/tests/browser/``.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.browser.conftest import ARTIFACTS, REPO
from tests.notebook_runs import EXPECTED_IMAGES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

RUN_TIMEOUT_MS = 180_000
# The options `make hooks` gives the git filter (keep in sync with the Makefile).
NBSTRIPOUT_ARGS = ["--keep-id", "--extra-keys", "metadata.language_info"]


def _run_all_and_save(page, lab, name: str) -> float:
    """Open ``name`` in Lab, run all cells, wait for the kernel to finish, save; return the seconds it took."""
    page.goto(lab.notebook_url(f"{name}.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'",
                           timeout=60_000)
    t0 = time.time()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # done when every code cell has a number in its prompt and the kernel is idle again
    page.wait_for_function(
        """() => {
            const nb = window.jupyterapp.shell.currentWidget;
            const cells = Array.from(nb.content.widgets).filter(c => c.model.type === 'code');
            return nb.sessionContext.kernelDisplayStatus === 'idle'
                && cells.every(c => c.model.executionCount !== null);
        }""", timeout=RUN_TIMEOUT_MS, polling=500)
    seconds = time.time() - t0
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    return seconds


def _stripped(path) -> str:
    """What git stores for a notebook through the repository's nbstripout filter (see .gitattributes)."""
    import subprocess
    import sys

    assert "*.ipynb filter=nbstripout" in (REPO / ".gitattributes").read_text()
    assert " ".join(NBSTRIPOUT_ARGS) in (REPO / "Makefile").read_text(), "the Makefile's hooks target uses other options"
    proc = subprocess.run([sys.executable, "-m", "nbstripout", *NBSTRIPOUT_ARGS, "-t"],
                          stdin=open(path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_in_jupyterlab(lab, browser):
    name = "00_quickstart"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    t_start = time.time()
    run_s = _run_all_and_save(page, lab, name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # 1. no error output: in the DOM, and in the notebook Lab saved
    saved = json.loads((lab.root / f"{name}.ipynb").read_text())
    errors = [o for c in saved["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == [], [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert page.locator(".jp-OutputArea-output:has-text('Traceback')").count() == 0

    # 2. figures are <img> elements rendered by Lab's image renderer (not "<Figure size ...>" text)
    images = page.locator(".jp-OutputArea-output.jp-RenderedImage img")
    assert images.count() == EXPECTED_IMAGES[name]
    assert page.locator(".jp-OutputArea-output:has-text('<Figure size')").count() == 0
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 100"), f"image {i} did not load"
    images.nth(0).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}_figure.png"))
    images.nth(1).screenshot(path=str(ARTIFACTS / f"{name}_per_class_iou.png"))

    # 3. the episode browser renders, and a slider step changes its image
    widget = page.locator(".jupyter-widgets.widget-vbox").last
    widget.wait_for(state="visible", timeout=60_000)
    assert page.locator(".jp-OutputArea-output:has-text('Loading widget...')").count() == 0
    widget_img = widget.locator("img")
    widget_img.wait_for(state="visible", timeout=30_000)
    before = widget_img.get_attribute("src")
    handle = widget.locator(".noUi-handle")
    assert float(handle.get_attribute("aria-valuenow")) == 0
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}_widget_before.png"))
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("([el, src]) => el.getAttribute('src') !== src", arg=[widget_img.element_handle(), before],
                           timeout=30_000)
    assert float(handle.get_attribute("aria-valuenow")) == 1
    page.screenshot(path=str(ARTIFACTS / f"{name}_widget_after.png"))

    # 4. the exercises' hints are collapsed <details> elements (Lab's sanitizer keeps them)
    hints = page.locator(".jp-MarkdownOutput details")
    assert hints.count() >= 3, "exercise hints should render as <details>"
    assert not hints.first.evaluate("d => d.open"), "hints must start hidden"
    hints.last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}_exercises.png"))

    # 5. opening and running leaves git clean: the saved pair, through the filters, equals the committed files
    (ARTIFACTS / f"{name}.saved.ipynb").write_text((lab.root / f"{name}.ipynb").read_text())
    assert _stripped(lab.root / f"{name}.ipynb") == (REPO / "notebooks" / f"{name}.ipynb").read_text(), \
        "the notebook Lab saved differs from the committed one after nbstripout (metadata written on open?)"
    assert (lab.root / f"{name}.py").read_text() == (REPO / "notebooks" / f"{name}.py").read_text(), \
        "jupytext rewrote the paired .py on save (see jupytext.toml)"
    assert console_errors == [], console_errors
    print(f"\nbrowser test: {name} ran all cells in {run_s:.1f} s; whole test {time.time() - t_start:.1f} s")
