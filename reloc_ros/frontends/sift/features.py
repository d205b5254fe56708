"""SIFT with pycolmap (COLMAP's extractor, the one the triangulation uses) and a bag of visual words for retrieval.

Descriptors are kept as COLMAP stores them (uint8, 512 × the L1-root-normalised float descriptor) and compared as
``uint8 / 512`` floats (unit L2 norm within ~1 %). Keypoints are returned in this repository's pixel convention
(origin at the centre of the top-left pixel; COLMAP's is its corner: ``triangulation.colmap_to_pixel``).
"""
from __future__ import annotations

import cv2  # before pycolmap: the other import order crashes in libpng when cv2 later writes a PNG
import numpy as np

from ...refinement.triangulation import colmap_to_pixel, sift_options

__all__ = ["SiftExtractor", "BagOfWords", "descriptors_to_float", "mutual_ratio_matches"]


def descriptors_to_float(desc_u8: np.ndarray) -> np.ndarray:
    """(N, 128) uint8 COLMAP descriptors -> (N, 128) float32 of unit L2 norm (±1 %)."""
    return np.asarray(desc_u8, dtype=np.float32) * (1.0 / 512.0)


class SiftExtractor:
    """COLMAP's SIFT on the CPU: ``extract(rgb)`` -> keypoints (N, 2) float64 pixels and descriptors (N, 128) uint8.

    ``max_features`` and ``first_octave`` as in ``triangulation.DEFAULT_TRIANGULATION_CONF`` (query and map must use
    the same); ``num_threads`` -1 = all cores. The image is converted to grey by COLMAP's ``Bitmap`` (as COLMAP does
    when it reads the mapping images from disk)."""

    def __init__(self, max_features: int = 4096, first_octave: int = -1, num_threads: int = -1):
        import pycolmap
        self._extractor = pycolmap.FeatureExtractor.create(sift_options(max_features, first_octave, num_threads),
                                                           pycolmap.Device.cpu)

    def extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import pycolmap
        grey = pycolmap.Bitmap.from_array(np.ascontiguousarray(rgb)).clone_as_grey().to_array()
        kps, desc = self._extractor.extract_from_uint8_array(np.ascontiguousarray(grey))
        uv = colmap_to_pixel(pycolmap.keypoints_to_matrix(kps)[:, :2]) if len(kps) else np.zeros((0, 2))
        return uv, np.asarray(desc.data, dtype=np.uint8).reshape(-1, 128)


def mutual_ratio_matches(query: np.ndarray, db: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matches of float descriptors (unit norm) that pass Lowe's ratio test (distance of the best
    ``<= ratio`` × the second best) and are mutual (hloc's ``NN-ratio`` + ``do_mutual_check``). Returns
    ``(query_idx, db_idx)`` int64 arrays. (torch for the matrix and its top-2: ~40x faster than NumPy's sort.)"""
    import torch
    if len(query) == 0 or len(db) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with torch.inference_mode():
        sim = torch.from_numpy(np.ascontiguousarray(query)) @ torch.from_numpy(np.ascontiguousarray(db)).T
        top, best = sim.topk(2, dim=1)                     # cosine; squared distance = 2 - 2 cos
        dist = (2 - 2 * top).clamp_min(0).sqrt()
        ok = dist[:, 0] <= ratio * dist[:, 1]
        ok &= sim.argmax(0)[best[:, 0]] == torch.arange(len(query))   # mutual
        q = torch.nonzero(ok)[:, 0]
        return q.numpy().astype(np.int64), best[q, 0].numpy().astype(np.int64)


class BagOfWords:
    """A visual vocabulary (k-means of map descriptors, ``cv2.kmeans``) with TF-IDF image vectors, as COLMAP's
    vocabulary-tree retrieval does with a flat vocabulary trained on the map itself (no vocabulary file is shipped,
    and nothing may be downloaded).

    ``vocabulary`` (K, 128) float32, ``idf`` (K,) float32."""

    def __init__(self, vocabulary: np.ndarray, idf: np.ndarray):
        self.vocabulary = np.asarray(vocabulary, dtype=np.float32)
        self.idf = np.asarray(idf, dtype=np.float32)
        self._sq = (self.vocabulary ** 2).sum(1)

    @classmethod
    def fit(cls, descriptors_per_image: list, num_words: int, sample: int = 100_000, iterations: int = 15,
            seed: int = 0) -> "BagOfWords":
        """Vocabulary from up to ``sample`` descriptors (float, unit norm) of the images, IDF from every image."""
        rng = np.random.default_rng(seed)
        everything = np.concatenate(descriptors_per_image)
        if len(everything) < num_words:
            raise ValueError(f"{len(everything)} descriptors are too few for a vocabulary of {num_words} words")
        pick = everything[rng.choice(len(everything), min(sample, len(everything)), replace=False)]
        cv2.setRNGSeed(seed)
        criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, iterations, 1e-4)
        _, _, centres = cv2.kmeans(np.ascontiguousarray(pick, dtype=np.float32), int(num_words), None, criteria, 1,
                                   cv2.KMEANS_PP_CENTERS)
        bow = cls(centres, np.ones(num_words, np.float32))
        df = np.zeros(num_words)
        for d in descriptors_per_image:
            df[np.unique(bow.words(d))] += 1
        bow.idf = np.log(len(descriptors_per_image) / np.maximum(df, 1)).astype(np.float32)
        return bow

    def words(self, desc: np.ndarray) -> np.ndarray:
        """(N,) index of the nearest word of each float descriptor."""
        return np.argmin(self._sq[None] - 2 * desc @ self.vocabulary.T, axis=1)

    def embed(self, desc: np.ndarray) -> np.ndarray:
        """(K,) L2-normalised TF-IDF vector of one image's float descriptors."""
        v = np.bincount(self.words(desc), minlength=len(self.vocabulary)).astype(np.float32) * self.idf
        return v / max(float(np.linalg.norm(v)), 1e-12)
