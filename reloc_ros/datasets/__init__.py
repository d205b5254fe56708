"""Dataset readers yielding ``Frame``s lazily: 7-Scenes layout (and the demo scene), Cambridge Landmarks, COLMAP
models, rosbag2 (sqlite3 / mcap), plain folders of unposed images. ``open_dataset`` picks the reader from the folder's contents."""
from __future__ import annotations

from pathlib import Path

from .base import Dataset, DatasetError, Frame, Subset

__all__ = ["Dataset", "DatasetError", "Frame", "Subset", "open_dataset", "detect_layout"]


def detect_layout(path) -> str:
    """One of ``"7scenes"``, ``"cambridge"``, ``"colmap"``, ``"rosbag"``, ``"images"`` (a plain folder of unposed
    images); DatasetError when none fits."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix in (".mcap", ".db3"):
            return "rosbag"
        raise DatasetError(f"{p}: a file that is not a rosbag2 (.mcap / .db3); pass a dataset folder")
    if (p / "metadata.yaml").is_file() or any(p.glob("*.mcap")) or any(p.glob("*.db3")):
        return "rosbag"
    from .sevenscenes import is_sevenscenes

    if is_sevenscenes(p):
        return "7scenes"
    if (p / "dataset_train.txt").is_file() or (p / "dataset_test.txt").is_file():
        return "cambridge"
    from .colmap import find_model

    if find_model(p) is not None:
        return "colmap"
    from .image_folder import image_files

    if image_files(p):
        return "images"
    raise DatasetError(f"{p}: unrecognised dataset layout (expected 7-Scenes frame-*.color.png/jpg + .pose.txt, "
                       "Cambridge dataset_train.txt/dataset_test.txt, a COLMAP model (cameras/images/points3D .bin "
                       "or .txt, also under sparse/0), a rosbag2 (metadata.yaml, .mcap, .db3) or a folder of "
                       ".png/.jpg images")


def open_dataset(path, frames=None, intrinsics=None, **options) -> Dataset:
    """Open the dataset at ``path`` (layout auto-detected, see ``detect_layout``).

    ``frames``: which frames — a frame-list file or list of names (7-Scenes, COLMAP image names), ``"train"`` /
    ``"test"`` or a split file (Cambridge); ignored for bags. ``intrinsics``: 3×3 K file / ``fx fy cx cy`` file,
    K array or ``Camera`` (7-Scenes, Cambridge). ``options`` go to the reader (e.g. ``images=`` for COLMAP,
    ``image_topic=``/``pose_topic=``/``map_frame=``/``camera_frame=`` for bags, ``focal=`` for Cambridge)."""
    layout = detect_layout(path)
    if layout == "7scenes":
        from .sevenscenes import SevenScenesDataset

        return SevenScenesDataset(path, frames=frames, intrinsics=intrinsics, **options)
    if layout == "cambridge":
        from .cambridge import CambridgeDataset

        return CambridgeDataset(path, split=frames or "train", intrinsics=intrinsics, **options)
    if layout == "colmap":
        from .colmap import ColmapDataset

        return ColmapDataset(path, frames=frames, **options)
    if layout == "images":
        from .image_folder import ImageFolderDataset

        return ImageFolderDataset(path, frames=frames, intrinsics=intrinsics, **options)
    from .rosbag import RosbagDataset

    if intrinsics is not None:
        options.setdefault("intrinsics", intrinsics)
    return RosbagDataset(path, **options)
