"""Mapping for the classical peer: points triangulated from the known poses (``refinement/triangulation.py``: SIFT,
pairs from the poses, matching + geometric verification, ``pycolmap.triangulate_points``), the SIFT descriptors of
every observation of a kept point, and a bag-of-words vocabulary with each mapping image's TF-IDF vector.

Map tensors: ``points_xyz`` (P, 3) float64 world (m); ``obs_point`` / ``obs_image`` (O,) int32;
``obs_descriptors`` (O, 128) uint8; ``vocabulary`` (K, 128) float32; ``idf`` (K,) float32; ``image_bow`` (N, K)
float16 (L2-normalised TF-IDF); ``image_poses`` (N, 4, 4) float64 ``T_world_cam`` of the mapping images.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...map_file import save_map
from ...refinement.triangulation import DEFAULT_TRIANGULATION_CONF, triangulate_dataset
from .features import BagOfWords, descriptors_to_float

__all__ = ["DEFAULT_CONF", "train"]

DEFAULT_CONF = {
    **DEFAULT_TRIANGULATION_CONF,  # SIFT, pairs, matching and point filters (refinement/triangulation.py)
    "sift_first_octave": 0,        # hloc's SIFT setting (no upsampling; -1, the triangulation's, gives ~2.5x the
                                   # keypoints at ~5x the query time)
    "min_track_length": 2,         # hloc keeps two-view points for localization (the reference model wants 3)
    "num_words": 1024,             # visual words of the retrieval vocabulary (k-means of map descriptors)
    "vocabulary_sample": 100_000,  # descriptors the k-means sees
    "seed": 0,
    "minutes": None,               # unused: this front end learns nothing (reloc-map --minutes is accepted, ignored)
    "device": "cpu",               # unused: COLMAP's SIFT runs on the CPU
    "progress": True,              # tqdm bars and COLMAP's log
}


def train(conf: dict, dataset, out_path: str | os.PathLike) -> Path:
    """Triangulate ``dataset`` (posed frames), fit the vocabulary and write the map to ``out_path``."""
    t0 = time.perf_counter()
    tri_conf = {k: conf[k] for k in DEFAULT_TRIANGULATION_CONF}
    with tempfile.TemporaryDirectory(prefix="reloc_sift_") as work:
        tri = triangulate_dataset(dataset, tri_conf, work_dir=work, progress=bool(conf["progress"]))
        descriptors = _read_descriptors(Path(work) / "database.db", len(dataset))
    obs_desc = np.stack([descriptors[i][k] for i, k in zip(tri.obs_image, tri.obs_keypoint)])
    t1 = time.perf_counter()
    floats = [descriptors_to_float(d) for d in descriptors]
    bow = BagOfWords.fit(floats, int(conf["num_words"]), int(conf["vocabulary_sample"]), seed=int(conf["seed"]))
    image_bow = np.stack([bow.embed(d) for d in tqdm(floats, desc="sift: image vectors", leave=False,
                                                     disable=not conf["progress"])])
    tensors = {"points_xyz": torch.from_numpy(tri.points_xyz), "obs_point": torch.from_numpy(tri.obs_point.astype(np.int32)),
               "obs_image": torch.from_numpy(tri.obs_image.astype(np.int32)),
               "obs_descriptors": torch.from_numpy(obs_desc), "vocabulary": torch.from_numpy(bow.vocabulary),
               "idf": torch.from_numpy(bow.idf), "image_bow": torch.from_numpy(image_bow.astype(np.float16)),
               "image_poses": torch.from_numpy(np.asarray(tri.poses, dtype=np.float64))}
    metadata = {"front_end": "sift", "sift": {"max_features": int(conf["max_features"]),
                                              "first_octave": int(conf["sift_first_octave"])},
                "training": {"n_frames": len(dataset), "triangulation": tri.stats,
                             "vocabulary_seconds": round(time.perf_counter() - t1, 1),
                             "train_seconds": round(time.perf_counter() - t0, 1),
                             "conf": {k: v for k, v in conf.items() if k not in ("device", "progress", "minutes")}}}
    path = save_map(out_path, tensors, metadata)
    if conf["progress"]:
        print(f"[sift] {tri.num_points} points ({len(obs_desc)} observations) from {len(dataset)} images, "
              f"{len(bow.vocabulary)} words, {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return path


def _read_descriptors(db_path: Path, n_images: int) -> list[np.ndarray]:
    """(K_i, 128) uint8 descriptors of input image i (database image ``{i:06d}.png``, triangulation's naming)."""
    import pycolmap
    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        return [np.asarray(db.read_descriptors(ids[f"{i:06d}.png"]).data, dtype=np.uint8).reshape(-1, 128)
                for i in range(n_images)]
    finally:
        db.close()
