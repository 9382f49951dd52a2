"""Sphinx configuration of the fss_lab site (`make book`): the notebooks as executed by papermill (QUICK) in
``book/executed/``, rendered with MyST-NB (no re-execution here), and the protocol card from datasets/README.md."""
project = "fss_lab"
author = "fss_lab contributors"
copyright = "fss_lab contributors, Apache-2.0"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # `make book` executes the notebooks with papermill first
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

html_theme = "sphinx_book_theme"
html_title = "fss_lab: few-shot segmentation, notebook by notebook"
html_theme_options = {"show_toc_level": 2, "home_page_in_toc": True}
