#!/usr/bin/env bash
# The recorded CPU benchmark configurations (issue 4's targets), one JSON per run in bench/results/.
#   bash bench/run.sh [label]        (about 15 minutes on a 2-core machine)
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for these commands only: on these machines they
# pin OpenBLAS to its Haswell kernels, half the GEMM speed of the SkylakeX ones. The JSON records
# the BLAS kernel actually used (threadpoolctl) and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-$(date +%Y-%m-%d)}
out=bench/results
mkdir -p "$out"
bench() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m npresnet.bench "$@"; }
# Targets, 1 thread, float32: ResNet-50 batch 16 at 224x224, ResNet-20 batch 128 at 32x32.
bench --models resnet50 --batch 16 --compare torch --profile --memory --json "$out/$label-resnet50-b16-1thread.json"
bench --models resnet20 --batch 128 --compare torch --profile --memory --json "$out/$label-resnet20-b128-1thread.json"
# The default command (ResNet-18/50 batch 8, ResNet-20/56 batch 64), with torch alongside.
bench --compare torch --json "$out/$label-default-1thread.json"
# Best case only: the VM's second vCPU is often not a real core.
bench --models resnet50 --batch 16 --threads 2 --compare torch --json "$out/$label-resnet50-b16-2threads.json"
