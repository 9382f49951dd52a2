"""fss_lab.progress.progress_bar: shown by default, silenced by TQDM_DISABLE=1 (set before or after import) and by
progress=False, with an explicit ``disable`` winning."""
import os
import subprocess
import sys

from fss_lab.progress import progress_bar, progress_disabled_by_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = (
    "import os, sys\n"
    "from fss_lab.progress import progress_bar\n"
    "if len(sys.argv) > 1: os.environ['TQDM_DISABLE'] = sys.argv[1]\n"
    "for _ in progress_bar(range(7), desc='bar'): pass\n"
)


def _stderr(env_value=None, late=None):
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    if env_value is not None:
        env["TQDM_DISABLE"] = env_value
    args = [sys.executable, "-c", SCRIPT] + ([late] if late is not None else [])
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120).stderr


def test_bar_shown_without_tqdm_disable():
    assert "7/7" in _stderr()


def test_tqdm_disable_in_the_environment_silences_the_bar():
    assert "7/7" not in _stderr("1")


def test_tqdm_disable_set_in_a_running_process_silences_the_bar():
    assert "7/7" not in _stderr(late="1")


def test_progress_false_and_explicit_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_disabled_by_env()
    assert progress_bar(range(3), progress=False).disable
    assert not progress_bar(range(3), progress=True, disable=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_disabled_by_env() and progress_bar(range(3)).disable
    assert list(progress_bar(range(3))) == [0, 1, 2]  # a disabled bar still iterates
