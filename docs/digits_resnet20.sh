#!/usr/bin/env bash
# Regenerates the README's recorded digits run: docs/digits_resnet20_metrics.csv and docs/digits_resnet20.png.
# The run is the README's training example (into runs/, which git ignores), on one thread, so that it is
# bit-reproducible; the two tracked files are copied from it. Usage, from the repository root:
#     bash docs/digits_resnet20.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/digits-resnet20
python -m npresnet.train --model resnet20 --data digits --epochs 30 --batch 64 --lr 0.05 --seed 0 --threads 1 \
    --out "$out" --plot "$out/curves.png" --progress none --overwrite
cp "$out/metrics.csv" docs/digits_resnet20_metrics.csv
cp "$out/curves.png" docs/digits_resnet20.png
echo "wrote docs/digits_resnet20_metrics.csv and docs/digits_resnet20.png from $out"
