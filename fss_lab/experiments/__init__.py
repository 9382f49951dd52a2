"""Run one configuration end to end -> tidy results: what notebooks and papermill call.

* :mod:`.fss`: 1-way K-shot FSS episodes on frozen backbone features (:class:`FSSExperiment`, :func:`run_fss`);
* :mod:`.base_model`: the base-trained segmentation model of a fold, loaded from its checkpoint or trained
  (:func:`get_base_model`);
* :mod:`.gfss`: generalized FSS runs on a base model's features (:class:`GFSSExperiment`).
"""
from ..data.defaults import DATASET_DEFAULTS, PROTOCOLS
from .fss import FSSConfig, FSSExperiment, as_method, run_fss

__all__ = ["DATASET_DEFAULTS", "PROTOCOLS", "FSSConfig", "FSSExperiment", "as_method", "run_fss"]
