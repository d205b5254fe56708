"""Sparse 2D–3D matches between reference points and a query feature map: the refiner's matching initialisation.

The LM of the featuremetric refinement converges only from poses within its basin (7-Scenes: ~70 % of starts at
5 cm / 2°, ~30 % at 30 cm / 12°). A front end whose errors reach tens of centimetres (the implicit one) or a
user's ``/initialpose`` click needs a wider one. Matching gives it: the reference points of the views near the prior
are matched to the query's cells by mutual nearest neighbour of their (PCA-reduced, L2-normalised) features over the
whole image, and PnP + RANSAC (``estimators.pnp``) on the matches gives a start for the LM that no longer depends on
how far off the prior was, only on the prior choosing reference views that see the query's scene.

Pixel convention: a match's pixel is the centre of the matched cell of a stride-``s`` level,
``xfeat.level_to_pixel`` (the inverse of ``pixel_to_level``, with which the LM samples).
"""
from __future__ import annotations

import numpy as np
import torch

from ..xfeat import level_to_pixel

__all__ = ["mutual_nearest_cells"]


def mutual_nearest_cells(ref_features: torch.Tensor, query_map: torch.Tensor, stride: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours, by cosine similarity, between reference features and the cells of a query map.

    ref_features: (N, D) unit vectors (the reference points' features at this level). query_map: (h, w, D)
    channels-last unit vectors (``ReferenceModel.query_maps``). stride: pixels per cell of the level.
    Returns ``uv`` (M, 2) float64 pixels of the matched cells' centres in the query image, ``index`` (M,) int64
    indices into ``ref_features`` of the matched points, and ``similarity`` (M,) float32 — for the M points whose
    best cell has that point as its best point.
    """
    if ref_features.ndim != 2 or query_map.ndim != 3 or ref_features.shape[1] != query_map.shape[2]:
        raise ValueError(f"expected (N, D) reference features and an (h, w, D) map, got {tuple(ref_features.shape)} "
                         f"and {tuple(query_map.shape)}")
    h, w, D = query_map.shape
    n = ref_features.shape[0]
    if n == 0 or h * w == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.float32)
    F = ref_features.float()
    Q = query_map.reshape(h * w, D).float()
    S = (F @ Q.T).cpu().numpy()                       # (N, hw); numpy's argmax is ~8x faster than torch's here
    best = S.argmax(1)
    sim = S[np.arange(n), best]
    # mutual check: is point i the best point of its best cell? (Q[best] @ Fᵀ is S[:, best]ᵀ without the gather)
    back = (Q[torch.from_numpy(best)] @ F.T).cpu().numpy().argmax(1)
    keep = np.nonzero(back == np.arange(n))[0]
    cells = best[keep]
    uv = level_to_pixel(np.stack([cells % w, cells // w], -1).astype(np.float64), stride)
    return uv, keep.astype(np.int64), sim[keep].astype(np.float32)
