"""Losses of each paper, one module per family (segmentation CE, triplet, pixel contrast, unbiased CE and distillation, InfoMax terms)."""
