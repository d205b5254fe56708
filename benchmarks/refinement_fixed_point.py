"""Where the featuremetric refinement settles when started at the ground truth, with some reference images hidden.

For 7-Scenes-layout frames (query or mapping split), the refinement starts at the frame's pseudo ground-truth pose;
the distance of its optimum from that pose measures how far the reference model's optimum and the pseudo ground
truth disagree. Reference images can be hidden from the view selection (by frame number, ``frame-NNNNNN``):

  --hide none        nothing hidden (query frames)
  --hide own         the frame's own image (mapping frames)
  --hide window:N    the reference images within N frames of the frame
  --hide block:N     the reference images in the frame's N-frame block
  --hide near:N      the reference images in the N-frame blocks adjacent to the frame's (query blocks sit between
                     mapping blocks in the 7-Scenes split used here)
  --hide far:N       all but those

Example (results in benchmarks/RESULTS_refinement.md, fourth session):
  .venv/bin/python benchmarks/refinement_fixed_point.py --ref out/bench7/ace10b.ref.safetensors --split mapping \
      --hide window:15 --n 100
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reloc_ros.datasets import open_dataset  # noqa: E402
from reloc_ros.metrics import pose_error, summarize_errors  # noqa: E402
from reloc_ros.refinement import FeaturemetricRefiner  # noqa: E402


def _frame_number(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def hidden_mask(rule: str, frame: int, ref_frames: np.ndarray) -> np.ndarray:
    """Reference images (by frame number) hidden from a frame numbered ``frame`` under ``rule``."""
    kind, _, arg = rule.partition(":")
    n = int(arg) if arg else 0
    if kind == "none":
        return np.zeros(len(ref_frames), bool)
    if kind == "own":
        return ref_frames == frame
    if kind == "window":
        return np.abs(ref_frames - frame) <= n
    if kind == "block":
        return ref_frames // n == frame // n
    if kind in ("near", "far"):
        near = np.abs(ref_frames // n - frame // n) == 1
        return near if kind == "near" else ~near
    raise ValueError(f"unknown --hide rule {rule!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "7scenes-redkitchen")
    p.add_argument("--ref", required=True, help="reference model (built from the mapping split)")
    p.add_argument("--split", default="query", choices=["query", "mapping"])
    p.add_argument("--hide", default="none")
    p.add_argument("--n", type=int, default=100, help="frames, evenly spaced over the split")
    p.add_argument("--conf", default="{}", help="JSON refiner options")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = open_dataset(args.data, frames=args.data / f"{args.split}.txt")
    refiner = FeaturemetricRefiner.from_reference(args.ref, **json.loads(args.conf))
    ref_frames = np.array([_frame_number(n) for n in refiner.ref.metadata["image_names"]])
    errors = []
    for i in tqdm(np.unique(np.linspace(0, len(frames) - 1, args.n).round().astype(int)), desc="fixed point"):
        fr = frames[int(i)]
        with refiner.views_hidden(hidden_mask(args.hide, _frame_number(fr.name), ref_frames)):
            res = refiner.refine(fr.image, fr.camera, fr.T_world_cam)
        T = res.T_refined if res.T_refined is not None else res.T_world_cam
        errors.append(pose_error(T, fr.T_world_cam))
    e = np.array(errors)
    out = {"summary": summarize_errors(e[:, 0], e[:, 1]), "command": " ".join(sys.argv), "args": vars(args) | {
        "data": str(args.data), "json": str(args.json)}}
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
