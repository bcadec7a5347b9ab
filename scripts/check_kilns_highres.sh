#!/usr/bin/env bash
# The kilns-highres workflow on stand-in data (run by hand, ~6 min on 2 cores): 15 synthetic
# ~1 m RGB scenes with ~160 kiln outlines to train on, 12 others to test on.
#
#   scripts/check_kilns_highres.sh work/kilns
set -euo pipefail
out=${1:?usage: check_kilns_highres.sh OUT_DIR}
python scripts/make_kilns_highres.py --out "$out/data"
/usr/bin/time -f "train: %e s wall, %M KiB peak" \
  sitewatch train --config configs/kilns-highres.yaml --images "$out/data/train/*.tif" \
    --labels "$out/data/train-labels.geojson" --out "$out/model"
sitewatch evaluate --model "$out/model" --labels "$out/data/test-labels.geojson" \
  --out "$out/eval" "$out"/data/test/*.tif
