"""Backbones (registry), segmentation heads, frozen feature extraction and the feature cache."""
