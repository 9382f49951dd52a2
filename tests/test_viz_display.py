"""fss_lab.viz.show / enable_notebook_figures: library figures (built without pyplot) become image/png outputs."""
import subprocess
import sys

from matplotlib.figure import Figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fig():
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_show_outside_ipython_saves_and_returns_none(tmp_path):
    from fss_lab.viz import enable_notebook_figures, show

    assert enable_notebook_figures() is False  # no shell: nothing registered
    out = tmp_path / "sub" / "fig.png"
    assert show(_fig(), out) is None
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_in_a_shell_figures_render_as_png_and_show_emits_one_image():
    # A fresh interpreter: an IPython shell must not leak into the other tests of this process.
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "from IPython.utils.capture import capture_output\n"
        "from matplotlib.figure import Figure\n"
        "shell = InteractiveShell.instance()\n"
        "import fss_lab.viz as viz\n"  # the import registers the formatter
        "fig = Figure(figsize=(2, 1)); fig.subplots().plot([0, 1])\n"
        "data, _ = shell.display_formatter.format(fig)\n"
        "assert data['image/png'][:4] == b'\\x89PNG', sorted(data)\n"
        "with capture_output() as cap:\n"
        "    assert viz.show(fig) is None\n"
        "kinds = [sorted(o.data) for o in cap.outputs]\n"
        "assert len(kinds) == 1 and 'image/png' in kinds[0], kinds\n"
        "assert cap.stdout == '', cap.stdout\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_show_closes_a_pyplot_figure_so_the_inline_backend_does_not_show_it_again(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fss_lab.viz import show
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    assert plt.fignum_exists(fig.number)
    show(fig, tmp_path / "f.png")
    assert not plt.fignum_exists(fig.number) and (tmp_path / "f.png").is_file()
    fig.savefig(tmp_path / "again.png")  # the Figure object is still usable
