"""What a student's install relies on: dependency floors that match what the code uses, the licence pyproject
declares, citation metadata for the papers the notebooks implement, and the notebook-hygiene configuration."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(r).name.lower().replace("_", "-"): Requirement(r) for r in reqs}


def test_floors_match_what_the_code_relies_on():
    reqs = _requirements()
    # TQDM_DISABLE is read by tqdm >= 4.66 only (fss_lab.progress documents it)
    assert not reqs["tqdm"].specifier.contains("4.65.2") and reqs["tqdm"].specifier.contains("4.66.0")
    # ipywidgets 8 widgets render in JupyterLab 4 from jupyterlab_widgets 3.0.8 on
    assert not reqs["jupyterlab-widgets"].specifier.contains("3.0.7")
    # the backbone imports timm's private timm.models._efficientnet_blocks: an upper bound is required
    assert any(s.operator in ("<", "<=", "~=", "==") for s in reqs["timm"].specifier), "timm needs an upper bound"
    import timm

    assert reqs["timm"].specifier.contains(Version(timm.__version__).base_version), "installed timm is out of range"
    for name in ("playwright", "nbstripout"):
        assert name in reqs, f"{name} (browser test / notebook filter) is missing from the extras"


def test_license_file_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_citation_cites_the_five_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    titles = " | ".join(r["title"] for r in cff["references"])
    for words in ("All You Need is Fine-Tuning", "EFTNet", "Contrastive Learning and Background Information",
                  "Strong Baseline for Generalized Few-Shot", "Mask Matching Transformer"):
        assert words in titles, words
    assert all(r.get("authors") and r.get("year") for r in cff["references"])


def test_notebook_hygiene_configuration():
    toml = tomllib.loads((REPO / "jupytext.toml").read_text())
    assert toml["formats"] == "ipynb,py:percent"
    assert "-jupytext.text_representation.jupytext_version" in toml["notebook_metadata_filter"]
    assert "*.ipynb filter=nbstripout" in (REPO / ".gitattributes").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert "filter.nbstripout.clean" in makefile and "--name fss_lab" in makefile
    for path in sorted((REPO / "notebooks").glob("*.py")):
        assert "#       jupytext_version:" not in path.read_text().split("# ---", 2)[1], f"{path.name}: jupytext_version"


def test_lowest_constraints_pin_every_floor_but_the_ci_torch_pair():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / ".ci" / "lowest_constraints.py"), str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    pins = dict(line.split("==") for line in out)
    assert pins["tqdm"] == "4.66" and pins["timm"] == "1.0.7" and pins["jupyterlab_widgets"] == "3.0.8"
    assert "torch" not in pins and "torchvision" not in pins  # constraints.txt pins them
    floors = {name for name, req in _requirements().items() if any(s.operator == ">=" for s in req.specifier)}
    assert {n.lower().replace("_", "-") for n in pins} == floors - {"torch", "torchvision"}
