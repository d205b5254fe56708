"""What every dataset reader yields: ``Frame`` objects, lazily, from a ``Dataset`` sequence."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry.camera import Camera

__all__ = ["Frame", "Dataset", "DatasetError"]


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and the problem."""


@dataclass
class Frame:
    """One posed image.

    image: (H, W, 3) uint8 RGB. camera: intrinsics of ``image``. T_world_cam: (4, 4) float64 camera-to-world
    (metres, OpenCV axes, rotation projected onto SO(3)) or None when unknown (e.g. a query without ground truth).
    depth: (h, w) float32 metres, 0 = invalid, seen by ``depth_camera``; ``T_cam_depth`` maps depth-camera points
    into the colour camera (None when the two are not registered, e.g. raw 7-Scenes Kinect depth).
    """

    name: str
    image: np.ndarray
    camera: Camera
    T_world_cam: np.ndarray | None
    depth: np.ndarray | None = None
    depth_camera: Camera | None = None
    T_cam_depth: np.ndarray | None = None
    stamp_ns: int | None = None


class Dataset(Sequence):
    """A lazy, indexable sequence of ``Frame``s. Subclasses set ``names`` and ``camera`` and implement
    ``_load(i)`` and ``poses()``."""

    names: list[str]
    camera: Camera
    root: object = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._load(i)

    def _load(self, i: int) -> Frame:
        raise NotImplementedError

    def poses(self) -> np.ndarray:
        """(N, 4, 4) ``T_world_cam`` of every frame, without decoding images (NaN where unknown)."""
        raise NotImplementedError


class Subset(Dataset):
    """The frames ``indices`` of ``dataset`` (a ``Dataset`` or any sequence of ``Frame``s), as a ``Dataset`` of
    their own (names, camera, poses)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        names = getattr(dataset, "names", None)
        self.names = [names[i] if names is not None else str(i) for i in self.indices]
        self.camera, self.root = getattr(dataset, "camera", None), getattr(dataset, "root", None)

    def _load(self, i: int) -> Frame:
        return self.dataset[self.indices[i]]

    def poses(self) -> np.ndarray:
        return self.dataset.poses()[self.indices]
