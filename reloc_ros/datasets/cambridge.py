"""Cambridge Landmarks reader.

``dataset_train.txt`` / ``dataset_test.txt``: three header lines, then ``seqN/frameNNNNN.png X Y Z W P Q R`` per
image: the camera centre in the world (metres) and the quaternion (w, x, y, z) of the world-to-camera rotation
``R_cam_world``. Hence ``T_world_cam = [R_cam_worldᵀ | (X, Y, Z)]`` (OpenCV camera axes, as in the VisualSFM
reconstruction the poses come from).

The files hold no intrinsics: pass ``intrinsics`` (3×3 K / ``fx fy cx cy`` file, K array or Camera) or
``focal`` (pixels, with ``cx``/``cy`` defaulting to the image centre ``(W − 1)/2``, ``(H − 1)/2``). All images of a
split must share one size and camera.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry.camera import Camera
from ..geometry.pose import NonRigidTransformError, R_from_quat_xyzw, make_T, validate_rigid
from .base import Dataset, DatasetError, Frame
from .io import check_image_size, read_rgb, resolve_camera

__all__ = ["CambridgeDataset", "read_cambridge_split", "write_cambridge_split"]

HEADER = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"


def read_cambridge_split(path: Path) -> tuple[list[str], np.ndarray]:
    """(image paths relative to the folder, (N, 4, 4) T_world_cam) from a dataset_*.txt file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file is missing")
    names, poses = [], []
    for k, line in enumerate(path.read_text().splitlines()[3:], start=4):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 8:
            raise DatasetError(f"{path}:{k}: expected 'image X Y Z W P Q R', got {len(parts)} fields")
        try:
            v = np.array(parts[1:], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"{path}:{k}: non-numeric pose values") from None
        q = v[3:]  # (w, x, y, z)
        nq = np.linalg.norm(q)
        if not np.isfinite(nq) or abs(nq - 1.0) > 1e-2:
            raise DatasetError(f"{path}:{k}: quaternion norm {nq:.4g} is not 1: not a rotation")
        R_cam_world = R_from_quat_xyzw(np.r_[q[1:], q[0]])
        try:
            T = validate_rigid(make_T(R_cam_world.T, v[:3]), name=f"{path}:{k}")
        except NonRigidTransformError as e:
            raise DatasetError(str(e)) from None
        names.append(parts[0])
        poses.append(T)
    if not names:
        raise DatasetError(f"{path}: no images listed after the 3 header lines")
    return names, np.stack(poses)


def write_cambridge_split(path: Path, names: list[str], poses: np.ndarray) -> None:
    """Write a dataset_*.txt file (inverse of ``read_cambridge_split``)."""
    from ..geometry.pose import quat_xyzw_from_R

    out = HEADER
    for n, T in zip(names, poses):
        q = quat_xyzw_from_R(T[:3, :3].T)  # world-to-camera rotation
        c = T[:3, 3]
        out += f"{n} {c[0]:.17g} {c[1]:.17g} {c[2]:.17g} {q[3]:.17g} {q[0]:.17g} {q[1]:.17g} {q[2]:.17g}\n"
    Path(path).write_text(out)


class CambridgeDataset(Dataset):
    """Lazy reader of one Cambridge split. ``split``: ``"train"``, ``"test"`` or the path of a dataset_*.txt."""

    def __init__(self, root, split="train", intrinsics=None, focal: float | None = None, cx: float | None = None,
                 cy: float | None = None):
        self.root = Path(root)
        split_file = Path(split)
        if str(split) in ("train", "test"):
            split_file = self.root / f"dataset_{split}.txt"
        elif not split_file.is_absolute() and not split_file.is_file():
            split_file = self.root / split_file
        self.names, self._T = read_cambridge_split(split_file)
        for n in self.names:
            if not (self.root / n).is_file():
                raise DatasetError(f"{self.root / n}: image listed in {split_file} is missing")
        first = read_rgb(self.root / self.names[0])
        h, w = first.shape[:2]
        if intrinsics is not None:
            self.camera = resolve_camera(intrinsics, w, h, str(intrinsics) if isinstance(intrinsics, (str, Path))
                                         else "intrinsics")
        elif focal is not None:
            cam = Camera.from_pinhole(focal, focal, (w - 1) / 2 if cx is None else cx,
                                      (h - 1) / 2 if cy is None else cy, w, h)
            self.camera = resolve_camera(cam, w, h, "focal/cx/cy")
        else:
            raise DatasetError(f"{split_file}: Cambridge files hold no intrinsics: pass intrinsics (--intrinsics "
                               "FILE with a 3x3 K) or focal (pixels)")

    def _load(self, i: int) -> Frame:
        path = self.root / self.names[i]
        img = read_rgb(path)
        check_image_size(img, self.camera.width, self.camera.height, path)
        return Frame(name=self.names[i], image=img, camera=self.camera, T_world_cam=self._T[i].copy())

    def poses(self) -> np.ndarray:
        return self._T.copy()
