#!/usr/bin/env bash
# Write COCO-20i masks and list files for a COCO 2014 folder (see datasets/README.md).
# Usage: bash datasets/prepare_coco20i.sh /path/to/COCO2014 [extra prepare_coco options, e.g. --polygons first]
# Expects COCO2014/{train2014,val2014,annotations/instances_{train,val}2014.json}; writes COCO2014/{train,val}/*.png
# and COCO2014/lists/coco/{train,val}.txt.
set -euo pipefail
ROOT="${1:?usage: bash datasets/prepare_coco20i.sh /path/to/COCO2014 [options]}"
shift
PYTHON="${PYTHON:-python}"
for SPLIT in train val; do
  "$PYTHON" -m fss_lab.data.prepare_coco \
    --annotations "$ROOT/annotations/instances_${SPLIT}2014.json" \
    --out "$ROOT/$SPLIT" --images "$ROOT/${SPLIT}2014" --root "$ROOT" \
    --list "$ROOT/lists/coco/$SPLIT.txt" "$@"
done
wc -l "$ROOT/lists/coco/train.txt" "$ROOT/lists/coco/val.txt"
