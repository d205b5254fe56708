"""A plain folder of images without poses (``*.png``, ``*.jpg``, ``*.jpeg``, sorted by name): out-of-map input for
``reloc-eval`` (how often does the gate accept a place the map does not hold?) or queries without ground truth.

Intrinsics are required (``intrinsics``: 3×3 K / ``fx fy cx cy`` file, K array or Camera), all images one size;
``Frame.T_world_cam`` is None."""
from __future__ import annotations

from pathlib import Path

from .base import Dataset, DatasetError, Frame
from .io import check_image_size, read_frame_list, read_rgb, resolve_camera

__all__ = ["ImageFolderDataset", "image_files"]

_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(root: Path) -> list[Path]:
    """The images directly in ``root`` (not in sub-folders), sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)


class ImageFolderDataset(Dataset):
    """Lazy reader of a folder of unposed images; ``frames``: list / list file of file names to keep."""

    def __init__(self, root, frames=None, intrinsics=None):
        self.root = Path(root)
        files = {p.name: p for p in image_files(self.root)}
        if not files:
            raise DatasetError(f"{self.root}: no .png/.jpg images in this folder")
        if intrinsics is None:
            raise DatasetError(f"{self.root}: a folder of images without poses needs --intrinsics (3x3 K or "
                               "'fx fy cx cy' file)")
        self.names = sorted(files) if frames is None else read_frame_list(frames, self.root, known=files)
        self._paths = [files[n] for n in self.names]
        first = read_rgb(self._paths[0])
        self.camera = resolve_camera(intrinsics, first.shape[1], first.shape[0], str(intrinsics))

    def _load(self, i: int) -> Frame:
        img = read_rgb(self._paths[i])
        check_image_size(img, self.camera.width, self.camera.height, self._paths[i])
        return Frame(name=self.names[i], image=img, camera=self.camera, T_world_cam=None)

    def poses(self):
        import numpy as np
        return np.full((len(self), 4, 4), np.nan)
