#!/usr/bin/env bash
# Leave-one-district-out on kilns-s2 (run by hand, 7-16 min per fold on 2 cores): train the
# kilns-s2-rgb recipe on one district's tiles, evaluate on the other's (by place: a kiln in
# two overlapping tiles counts once), both ways; with the ImageNet encoder (INIT=imagenet, the
# recipe's own) or from scratch (INIT=scratch, the override its comments give). Object-free
# land from the NEGATIVES ports trains the model to stay quiet; the other ports are left for
# scripts/false_alarms.py.
#
#   INIT=imagenet scripts/kilns_lodo.sh ../shared/data/kilns-s2 ../shared/data/sen2ships folds/imagenet
#   INIT=scratch scripts/kilns_lodo.sh ../shared/data/kilns-s2 ../shared/data/sen2ships folds/scratch
#   CONFIG=my-kilns.yaml scripts/kilns_lodo.sh ...     # another recipe (default configs/kilns-s2-rgb.yaml)
set -euo pipefail
kilns=${1:?usage: kilns_lodo.sh KILNS_DIR SEN2SHIPS_DIR OUT_DIR}
ports=${2:?usage: kilns_lodo.sh KILNS_DIR SEN2SHIPS_DIR OUT_DIR}
out=${3:?usage: kilns_lodo.sh KILNS_DIR SEN2SHIPS_DIR OUT_DIR}
negatives=()
for port in ${NEGATIVES:-algiers athens busan cartagena casablanca}; do negatives+=("$ports/$port"); done
case "${INIT:-imagenet}" in
  imagenet) flags=(--set model.arch=efficient-centernet --set model.pretrained=imagenet
                   --set "model.arch_params={head_width: 32}" --set train.encoder_lr_scale=0.3) ;;
  scratch) flags=(--set model.arch=centernet --set model.pretrained=none --set train.encoder_lr_scale=1
                  --set "model.arch_params={widths: [32, 64, 96, 128], blocks: [1, 2, 2, 1], head_width: 32}") ;;
  *) echo "kilns_lodo.sh: INIT must be imagenet or scratch, not ${INIT}" >&2; exit 2 ;;
esac
for pair in "jessore mymensingh" "mymensingh jessore"; do
  set -- $pair
  train=$1 test=$2
  sitewatch train --config "${CONFIG:-configs/kilns-s2-rgb.yaml}" --images "$kilns/$train/"*.tif \
    --labels "$kilns/$train/labels.geojson" --negatives "${negatives[@]}" --out "$out/$train/model" \
    --overwrite "${flags[@]}" ${TRAIN_FLAGS:-}
  sitewatch evaluate --model "$out/$train/model" --labels "$kilns/$test/labels.geojson" --primary distance \
    --distance-m 30 --out "$out/$train/eval-$test" --overwrite "$kilns/$test/"*.tif
done
