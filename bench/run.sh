#!/usr/bin/env bash
# The recorded CPU benchmark configurations, at 1 thread and at all cores, one JSON per model in
# bench/results/, named by the CPU (model name, family and model, from /proc/cpuinfo) and the date,
# then the README's speed table regenerated from them (bench/speed_table.py):
#   bash bench/run.sh [label]        (label default: the date; about 20 minutes on a 2-core machine)
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for these commands only: on some machines they
# pin OpenBLAS to its Haswell kernels, half the GEMM speed of the SkylakeX ones. The JSON records
# the BLAS kernel actually used (threadpoolctl), the CPU and every library version.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-$(date +%Y-%m-%d)}
out=bench/results
mkdir -p "$out"
# The CPU part of the names: model name, family and model ("amd-epyc-f25-m17"), since one model
# name ("AMD EPYC") covers several generations.
cpu=$(python -c "from npresnet.bench.machine import file_label; print(file_label())")
bench() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m npresnet.bench "$@"; }
common=(--compare torch --profile --memory --repeat 5 --threads 1,all --steps train forward)
# Targets, float32: ResNet-50 batch 16 at 224x224, ResNet-20 batch 128 at 32x32.
r50="$out/$cpu-$label-resnet50-b16.json"
r20="$out/$cpu-$label-resnet20-b128.json"
bench --model resnet50 --batch 16 "${common[@]}" --json "$r50"
bench --model resnet20 --batch 128 "${common[@]}" --json "$r20"
python bench/speed_table.py "$r50" "$r20"
