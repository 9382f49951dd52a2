"""fss_lab: a Jupyter-first lab for few-shot (FSS) and generalized few-shot (GFSS) semantic segmentation."""
__version__ = "0.1.0"

__all__ = ["segment", "__version__"]


def __getattr__(name: str):
    """``fss_lab.segment`` (imported on first use, so ``import fss_lab`` stays light)."""
    if name == "segment":
        from .own_images import segment

        globals()["segment"] = segment
        return segment
    raise AttributeError(f"module 'fss_lab' has no attribute {name!r}")
