"""7-Scenes layout reader (also the demo scene's layout).

Per frame ``<name>.color.(png|jpg)``, ``<name>.pose.txt`` (4×4 camera-to-world, metres, OpenCV axes) and optionally
``<name>.depth.png`` (uint16 mm, 0 and 65535 invalid). Names are ``frame-NNNNNN`` in the folder, or
``seq-XX/frame-NNNNNN`` in the original per-sequence layout. Intrinsics: the ``intrinsics`` argument (3×3 K file,
``fx fy cx cy`` file, K array or Camera) or ``rgb-intrinsics.txt`` in the folder. Depth: when the folder holds
``depth-camera-intrinsics.txt`` the depth comes from a separate, unregistered camera (real Kinect 7-Scenes:
``depth_camera`` = that K, ``T_cam_depth`` = None); otherwise depth is registered to the colour image
(``depth_camera`` = the colour camera, ``T_cam_depth`` = identity).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry.camera import Camera
from .base import Dataset, DatasetError, Frame
from .io import (check_image_size, read_depth_mm, read_frame_list, read_intrinsics, read_pose_file, read_rgb,
                 resolve_camera)

__all__ = ["SevenScenesDataset", "is_sevenscenes"]


def _color_files(root: Path) -> list[Path]:
    files = sorted(root.glob("frame-*.color.png")) + sorted(root.glob("frame-*.color.jpg"))
    if not files:
        files = sorted(root.glob("seq*/frame-*.color.png")) + sorted(root.glob("seq*/frame-*.color.jpg"))
    return sorted(files)


def is_sevenscenes(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and bool(_color_files(root))


class SevenScenesDataset(Dataset):
    """Lazy 7-Scenes-layout dataset; see the module docstring. ``frames``: list file (e.g. ``mapping.txt``,
    relative to the folder or absolute) or list of names (with or without suffix); default all frames."""

    def __init__(self, root, frames=None, intrinsics=None, load_depth: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder")
        if frames is None:
            files = _color_files(self.root)
            if not files:
                raise DatasetError(f"{self.root}: no frame-*.color.png/jpg images")
            self.names = [str(f.relative_to(self.root))[: -len(".color.jpg")] for f in files]
        else:
            self.names = read_frame_list(frames, self.root)
        self._color = []
        for n in self.names:
            for ext in ("png", "jpg"):
                p = self.root / f"{n}.color.{ext}"
                if p.is_file():
                    self._color.append(p)
                    break
            else:
                raise DatasetError(f"{self.root / n}.color.png/.jpg: frame {n!r} is listed but its image is missing")
            pose = self.root / f"{n}.pose.txt"
            if not pose.is_file():
                raise DatasetError(f"{pose}: pose file is missing for frame {n!r}")
        self.load_depth = load_depth
        # Colour camera; the size of the first image fixes the size of all.
        first = read_rgb(self._color[0])
        h, w = first.shape[:2]
        if intrinsics is None:
            kfile = self.root / "rgb-intrinsics.txt"
            if not kfile.is_file():
                raise DatasetError(f"{self.root}: no intrinsics: pass intrinsics (--intrinsics FILE with a 3x3 K) "
                                   f"or put rgb-intrinsics.txt in the folder")
            intrinsics, source = kfile, str(kfile)
        else:
            source = str(intrinsics) if isinstance(intrinsics, (str, Path)) else "intrinsics"
        self.camera = resolve_camera(intrinsics, w, h, source)
        dfile = self.root / "depth-camera-intrinsics.txt"
        self._depth_K = read_intrinsics(dfile) if dfile.is_file() else None
        self._poses = None

    def _path(self, i: int, suffix: str) -> Path:
        return self.root / f"{self.names[i]}{suffix}"

    def _load(self, i: int) -> Frame:
        img = read_rgb(self._color[i])
        check_image_size(img, self.camera.width, self.camera.height, self._color[i])
        T = read_pose_file(self._path(i, ".pose.txt"))
        depth = depth_cam = T_cam_depth = None
        dpath = self._path(i, ".depth.png")
        if self.load_depth and dpath.is_file():
            depth = read_depth_mm(dpath)
            dh, dw = depth.shape
            if self._depth_K is None:
                check_image_size(depth, self.camera.width, self.camera.height, dpath)
                depth_cam, T_cam_depth = self.camera, np.eye(4)
            else:
                depth_cam = Camera(dw, dh, self._depth_K)
        return Frame(name=self.names[i], image=img, camera=self.camera, T_world_cam=T, depth=depth,
                     depth_camera=depth_cam, T_cam_depth=T_cam_depth)

    def poses(self) -> np.ndarray:
        if self._poses is None:
            self._poses = np.stack([read_pose_file(self._path(i, ".pose.txt")) for i in range(len(self))])
        return self._poses.copy()
