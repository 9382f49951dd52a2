"""Per-dataset facts the experiments need: image size, transform mode, episode protocol, GFSS protocol settings.

Kept next to :func:`fss_lab.data.create_dataset` so a new dataset brings its defaults with it.
"""
from __future__ import annotations

#: Per-dataset defaults: image size (H, W), transform mode and episode protocol.
#: "same_split": queries and supports from the val split (PFENet/BAM/RePRI). "cross_group": queries from val,
#: supports from train images of other groups (CamVid videos), the honest protocol for video frames.
DATASET_DEFAULTS: dict[str, dict] = {
    "synthetic": {"image_size": (192, 192), "transform_mode": "resize", "protocol": "same_split"},
    "camvid": {"image_size": (240, 320), "transform_mode": "resize", "protocol": "cross_group"},
    "folder": {"image_size": (240, 320), "transform_mode": "long_side_pad", "protocol": "same_split"},
    "pascal5i": {"image_size": (417, 417), "transform_mode": "long_side_pad", "protocol": "same_split"},
    "coco20i": {"image_size": (417, 417), "transform_mode": "long_side_pad", "protocol": "same_split"},
    "fss1000": {"image_size": (224, 224), "transform_mode": "resize", "protocol": "same_split"},
}
PROTOCOLS = ("same_split", "cross_group")

#: GFSS-run settings that differ from the DIaM protocol's defaults, per dataset (keywords of
#: :class:`fss_lab.experiments.gfss.GFSSConfig`). The generated data use their own area rule (their objects are
#: smaller than DIaM's 9.4 %-of-the-image rule). CamVid draws supports from the other videos' training frames
#: (cross-video), allows several novel classes per support image, and draws no separate base shots: every street
#: frame holds some novel class, so no image qualifies as a base-only shot, while the novel supports (fully labelled
#: for fine-tuning) already show every base class.
GFSS_DEFAULTS: dict[str, dict] = {
    "synthetic": {"min_area": "dataset"},
    "camvid": {"min_area": "dataset", "support_split": "train", "cross_group": True, "only_one_novel": False,
               "base_shots": False},
}


def dataset_defaults(name: str) -> dict:
    """The :data:`DATASET_DEFAULTS` entry of ``name`` (users' folders' entry for an unknown name)."""
    return DATASET_DEFAULTS.get(name, DATASET_DEFAULTS["folder"])
