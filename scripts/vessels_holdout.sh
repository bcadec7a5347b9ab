#!/usr/bin/env bash
# Measure the vessels-sentinel2 recipe on ports it has not seen (run by hand, ~35 min on 2 cores):
# train on six sen2ships ports, then `sitewatch evaluate` on the other three.
#
#   scripts/vessels_holdout.sh ../shared/data/sen2ships folds/acH
#
# HOLDOUT (default: algiers casablanca honolulu, every third port) can be changed:
#   HOLDOUT="athens busan gdynia" scripts/vessels_holdout.sh ../shared/data/sen2ships folds/abg
set -euo pipefail
data=${1:?usage: vessels_holdout.sh SEN2SHIPS_DIR OUT_DIR}
out=${2:?usage: vessels_holdout.sh SEN2SHIPS_DIR OUT_DIR}
holdout=${HOLDOUT:-algiers casablanca honolulu}
train=()
test=()
for port in algiers athens busan cartagena casablanca gdynia honolulu klang marseille; do
  if [[ " $holdout " == *" $port "* ]]; then test+=("$data/$port"); else train+=("$data/$port"); fi
done
# The COCO file lists every port: the held-out ones are "images that match no scene" here.
sitewatch train --config configs/vessels-sentinel2.yaml --images "${train[@]}" \
  --labels "$data/coco_annotations.json" --skip-bad-labels --out "$out/model" ${TRAIN_FLAGS:-}
sitewatch evaluate --model "$out/model" --labels "$data/coco_annotations.json" --skip-bad-labels \
  --class-map ship=vessel --primary distance --distance-m 30 --out "$out/eval" "${test[@]}"
