#!/usr/bin/env bash
# Thirteenth session (issue #15): the current defaults on the AVX2 branch of the AVX-512 EPYC (torch's kernels
# capped at AVX2; precision auto then picks fp32 everywhere), and one hold-out variant (blocks of 10 frames, bf16).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HOME=${HOME:-/tmp} GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
D=../shared/data/7scenes-redkitchen
OUT=benchmarks/results/avx2_cap
W=${W:-/tmp/avx2_cap}
mkdir -p "$W"
(
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
.venv/bin/reloc-map --dataset $D --front-end ace --out "$W/ace_dslam.map.safetensors" \
    --reference-set unregistered_depth=identity                      # 10-min cap: 5505 of 9600 iterations
.venv/bin/reloc-eval --map "$W/ace_dslam.map.safetensors" --dataset $D --json $OUT/ace_dslam_eval.json
.venv/bin/reloc-eval --map "$W/ace_dslam.map.safetensors" --dataset $D --refine --json $OUT/ace_dslam_eval_refine.json
# implicit (benchmarks/results/export/commands.sh's map) with the ACE map's reference model
.venv/bin/reloc-eval --map "${IMPLICIT:-/tmp/imp/implicit_dslam.map.safetensors}" --dataset $D --refine \
    --reference "${REF:-$W/ace_dslam.ref.safetensors}" --json $OUT/implicit_dslam_eval_refine.json
)
# hold-out in blocks of 10 frames instead of 25 (uncapped: bf16, the full 9600 iterations)
.venv/bin/python - <<'PY'
import cv2  # noqa: F401  (before pycolmap)
from pathlib import Path
from reloc_ros.mapping.build import MapJob, build_map
build_map(MapJob(Path("../shared/data/7scenes-redkitchen"), Path("/tmp/avx2_cap/ace_dslam_b10.map.safetensors"), "ace",
                 minutes=10.0, reference_conf={"unregistered_depth": "identity"},
                 calibration={"holdout_fraction": 0.1, "block_frames": 10}))
PY
.venv/bin/reloc-eval --map "$W/ace_dslam_b10.map.safetensors" --dataset $D --json $OUT/holdout_block10_ace_dslam_eval.json
.venv/bin/reloc-eval --map "$W/ace_dslam_b10.map.safetensors" --dataset $D --refine \
    --json $OUT/holdout_block10_ace_dslam_eval_refine.json
# the same on the SfM pose set (SFM: a folder of real files, e.g. /tmp/rk/sfm; the shared one has text-stub links)
SFM=${SFM:-/tmp/rk/sfm}
.venv/bin/python - "$SFM" <<'PY'
import sys
import cv2  # noqa: F401  (before pycolmap)
from pathlib import Path
from reloc_ros.mapping.build import MapJob, build_map
build_map(MapJob(Path(sys.argv[1]), Path("/tmp/avx2_cap/ace_sfm_b10.map.safetensors"), "ace", minutes=10.0,
                 reference_conf={"unregistered_depth": "identity"},
                 calibration={"holdout_fraction": 0.1, "block_frames": 10}))
PY
.venv/bin/reloc-eval --map "$W/ace_sfm_b10.map.safetensors" --dataset "$SFM" --json $OUT/holdout_block10_ace_sfm_eval.json
.venv/bin/reloc-eval --map "$W/ace_sfm_b10.map.safetensors" --dataset "$SFM" --refine \
    --json $OUT/holdout_block10_ace_sfm_eval_refine.json
