"""COLMAP model reader (binary or text, via ``pycolmap.Reconstruction``).

``T_world_cam`` is the inverse of COLMAP's ``cam_from_world`` (COLMAP's camera axes are OpenCV's). Intrinsics per
image come from ``Camera.from_colmap`` (which shifts COLMAP's corner-origin principal point by −0.5 px). Images
are read from ``images`` (default: ``<model>/images``, ``<model>/../images`` or ``<model>/../../images``).
Only registered images (with a pose) are listed, sorted by name. ``Dataset.camera`` is the camera of the first
frame; frames of other COLMAP cameras carry their own ``Frame.camera``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry.camera import Camera, InvalidCameraError
from ..geometry.pose import NonRigidTransformError, validate_rigid
from .base import Dataset, DatasetError, Frame
from .io import check_image_size, read_frame_list, read_rgb

__all__ = ["ColmapDataset", "find_model"]

_FILES = ("cameras", "images", "points3D")


def find_model(root) -> Path | None:
    """The folder holding cameras/images/points3D (.bin or .txt): ``root`` itself, ``root/sparse/0`` or
    ``root/sparse``; None if there is none."""
    root = Path(root)
    for cand in (root, root / "sparse" / "0", root / "sparse"):
        for ext in (".bin", ".txt"):
            if all((cand / f"{f}{ext}").is_file() for f in _FILES):
                return cand
    return None


def _cam_from_world(img) -> np.ndarray:
    rig = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
    M = np.eye(4)
    M[:3, :4] = np.asarray(rig.matrix())
    return M


class ColmapDataset(Dataset):
    """Lazy reader of a COLMAP model; ``frames``: list or list file of image names to keep (default all)."""

    def __init__(self, path, frames=None, images=None):
        import pycolmap

        model = find_model(path)
        if model is None:
            raise DatasetError(f"{path}: no COLMAP model (cameras/images/points3D .bin or .txt)")
        try:
            self.rec = pycolmap.Reconstruction(str(model))
        except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on corrupt files
            raise DatasetError(f"{model}: could not read the COLMAP model ({e})") from None
        self.root = Path(path)
        if images is None:
            cands = [model / "images", model.parent / "images", model.parent.parent / "images"]
            images = next((c for c in cands if c.is_dir()), None)
            if images is None:
                raise DatasetError(f"{model}: no images folder found (looked in {', '.join(map(str, cands))}); "
                                   "pass images=")
        self.images_dir = Path(images)
        by_name = {}
        for img in self.rec.images.values():
            if img.has_pose:
                by_name[img.name] = img
        if frames is None:
            names = sorted(by_name)
        else:
            names = read_frame_list(frames, self.root, known=by_name)
        if not names:
            raise DatasetError(f"{model}: the model has no registered images")
        self.names = names
        self._T = []
        self._cams = []
        cam_cache = {}
        for n in names:
            img = by_name[n]
            try:
                self._T.append(validate_rigid(np.linalg.inv(_cam_from_world(img)), name=f"{model}: image {n}"))
            except NonRigidTransformError as e:
                raise DatasetError(str(e)) from None
            if img.camera_id not in cam_cache:
                try:
                    cam_cache[img.camera_id] = Camera.from_colmap(self.rec.cameras[img.camera_id])
                except InvalidCameraError as e:
                    raise DatasetError(f"{model}: camera {img.camera_id}: {e}") from None
            self._cams.append(cam_cache[img.camera_id])
        self.camera = self._cams[0]

    def _load(self, i: int) -> Frame:
        path = self.images_dir / self.names[i]
        img = read_rgb(path)
        cam = self._cams[i]
        check_image_size(img, cam.width, cam.height, path)
        return Frame(name=self.names[i], image=img, camera=cam, T_world_cam=self._T[i].copy())

    def poses(self) -> np.ndarray:
        return np.stack(self._T)
