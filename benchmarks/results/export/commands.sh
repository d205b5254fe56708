#!/usr/bin/env bash
# Issue #20 figures (benchmarks/RESULTS_export.md), thirteenth session. ACE=/IMPLICIT= the redkitchen dSLAM maps
# (ACE: the twelfth session's map recalibrated with cell_stride 4; implicit: reloc-map --front-end implicit
# --dataset ../shared/data/7scenes-redkitchen --minutes 20 --no-reference, 6270 steps in 427 s).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HOME=${HOME:-/tmp} GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
ACE=${ACE:-/tmp/s4i/ace_dslam.map.safetensors}
IMPLICIT=${IMPLICIT:-/tmp/imp/implicit_dslam.map.safetensors}
DATA=../shared/data/7scenes-redkitchen
OUT=benchmarks/results/export
ONNX=${ONNX:-/tmp/reloc_export_dslam}
# 1. the networks alone: parity and stage latency, every pipeline interleaved frame by frame
.venv/bin/python benchmarks/bench_export.py --map "$ACE" --dataset $DATA --limit 400 --threads 1,2 \
    --json $OUT/redkitchen_ace_dslam.json
.venv/bin/python benchmarks/bench_export.py --map "$IMPLICIT" --dataset $DATA --limit 400 --threads 1,2 \
    --json $OUT/redkitchen_implicit_dslam.json
# 2. the whole Localizer (ACE + refinement) on each backend / precision, 2 threads
rm -rf "$ONNX"
.venv/bin/reloc-export --map "$ACE" --out "$ONNX" --precisions fp32,fp16,int8 --int8-images $DATA
E=(.venv/bin/reloc-eval --map "$ACE" --dataset $DATA --refine)
"${E[@]}" --front-end-options '{"encoder_precision": "fp32", "head_precision": "fp32", "encoder_backend": "torch"}' \
    --refiner-options '{"feature_precision": "fp32"}' --json $OUT/eval_refine_torch_fp32.json
"${E[@]}" --json $OUT/eval_refine_torch_auto.json
for p in fp32 fp16 int8; do
    "${E[@]}" --backend onnxruntime --front-end-options "{\"onnx_dir\": \"$ONNX\", \"onnx_precision\": \"$p\"}" \
        --json $OUT/eval_refine_onnxruntime_$p.json
done
