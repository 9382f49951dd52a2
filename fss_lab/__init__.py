"""fss_lab: a Jupyter-first lab for few-shot (FSS) and generalized few-shot (GFSS) semantic segmentation."""
__version__ = "0.1.0"
