"""Build VOC2012/SegmentationClassAug (VOC2012 + SBD masks as grey PNGs of class ids) for PASCAL-5i.

Usage (after downloading VOC2012 and SBD, e.g. with torchvision, see datasets/README.md)::

    python datasets/build_voc_aug.py --voc data/VOCdevkit/VOC2012 --sbd data/SBD

SBD ``cls/*.mat`` masks (values 0..20) are written first; VOC2012's own ``SegmentationClass`` masks (palette
indices 0..20, 255 on object boundaries) then overwrite them where both exist, as in the usual "aug" masks.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def build(voc: Path, sbd: Path) -> int:
    """Write ``voc/SegmentationClassAug/<id>.png`` from SBD and VOC masks; returns the number of files written."""
    from scipy.io import loadmat  # scipy ships with scikit-image

    out = voc / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    mats = sorted((sbd / "cls").glob("*.mat"))
    pngs = sorted((voc / "SegmentationClass").glob("*.png"))
    if not mats or not pngs:
        raise SystemExit(f"found {len(mats)} SBD masks in {sbd / 'cls'} and {len(pngs)} VOC masks in "
                         f"{voc / 'SegmentationClass'}; both are needed")
    for mat in mats:
        label = np.asarray(loadmat(mat)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
        Image.fromarray(label).save(out / f"{mat.stem}.png")
    for png in pngs:  # palette PNG -> its indices as a grey PNG (255 boundaries kept)
        with Image.open(png) as im:
            Image.fromarray(np.asarray(im, dtype=np.uint8)).save(out / png.name)
    return len({p.stem for p in mats} | {p.stem for p in pngs})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc", type=Path, required=True, help="the VOC2012 folder (holds SegmentationClass/)")
    parser.add_argument("--sbd", type=Path, required=True, help="the SBD folder (holds cls/*.mat)")
    args = parser.parse_args()
    print(f"wrote {build(args.voc, args.sbd)} masks to {args.voc / 'SegmentationClassAug'}")
