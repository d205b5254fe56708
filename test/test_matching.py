"""Mutual-nearest-neighbour matching of reference features to a query feature map (refinement/matching.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reloc_ros.refinement.matching import mutual_nearest_cells
from reloc_ros.xfeat import pixel_to_level


def _planted(h=12, w=16, D=16, n=20, stride=8, seed=0):
    """A random unit-feature map with ``n`` reference features planted (with noise) at distinct known cells."""
    g = torch.Generator().manual_seed(seed)
    fmap = F.normalize(torch.randn(h, w, D, generator=g), dim=-1)
    cells = torch.randperm(h * w, generator=g)[:n]
    ref = F.normalize(fmap.reshape(-1, D)[cells] + 0.05 * torch.randn(n, D, generator=g), dim=-1)
    return ref, fmap, cells.numpy(), stride


def test_planted_features_are_found_at_their_cell_centres():
    ref, fmap, cells, s = _planted()
    h, w, _ = fmap.shape
    uv, index, sim = mutual_nearest_cells(ref, fmap, s)
    np.testing.assert_array_equal(index, np.arange(len(ref)))       # every planted point matched, in order
    expect = np.stack([(cells % w + 0.5) * s - 0.5, (cells // w + 0.5) * s - 0.5], -1)
    np.testing.assert_allclose(uv, expect, atol=0)
    # the pixel convention is the inverse of the level mapping the LM samples with
    np.testing.assert_allclose(pixel_to_level(torch.from_numpy(uv), s).numpy(),
                               np.stack([cells % w, cells // w], -1), atol=1e-9)
    assert np.all(sim > 0.9) and sim.dtype == np.float32


def test_only_mutual_matches_survive():
    ref, fmap, cells, s = _planted()
    # a second, noisier copy of point 3 competes for the same cell: only the closer one keeps it
    dup = F.normalize(ref[3] + 0.3 * torch.randn(ref.shape[1], generator=torch.Generator().manual_seed(5)), dim=0)
    uv, index, _ = mutual_nearest_cells(torch.cat([ref, dup[None]]), fmap, s)
    assert 3 in index and len(ref) not in index and len(index) == len(ref)
    # features that match nothing well still have a nearest cell, but that cell prefers a planted point
    far = F.normalize(torch.randn(5, ref.shape[1], generator=torch.Generator().manual_seed(9)), dim=-1)
    _, index, _ = mutual_nearest_cells(torch.cat([ref, far]), fmap, s)
    assert set(range(len(ref))) <= set(index.tolist())


def test_empty_and_malformed_inputs():
    ref, fmap, _, s = _planted()
    uv, index, sim = mutual_nearest_cells(ref[:0], fmap, s)
    assert uv.shape == (0, 2) and index.shape == (0,) and sim.shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, D\) reference features and an \(h, w, D\) map"):
        mutual_nearest_cells(ref[:, :8], fmap, s)
    with pytest.raises(ValueError, match="reference features"):
        mutual_nearest_cells(ref, fmap.reshape(-1, fmap.shape[-1]), s)
