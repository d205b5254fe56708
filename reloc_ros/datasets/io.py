"""Small file helpers shared by the readers: images, matrices, intrinsics and frame lists, with ``DatasetError``s
that name the file and the problem."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..geometry.camera import Camera, InvalidCameraError
from ..geometry.pose import NonRigidTransformError, validate_rigid
from .base import DatasetError

__all__ = ["read_rgb", "read_depth_mm", "read_matrix", "read_pose_file", "read_intrinsics", "resolve_camera",
           "read_frame_list", "check_image_size"]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; DatasetError if the file is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file is missing")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: unreadable image (not a decodable PNG/JPEG)")
    return np.ascontiguousarray(img[..., ::-1])


def read_depth_mm(path: Path, invalid=(0, 65535)) -> np.ndarray:
    """(H, W) float32 metres from a 16-bit PNG in millimetres; values in ``invalid`` become 0."""
    path = Path(path)
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise DatasetError(f"{path}: unreadable depth image")
    if d.ndim != 2 or d.dtype != np.uint16:
        raise DatasetError(f"{path}: depth must be a single-channel 16-bit PNG (mm), got {d.dtype} {d.shape}")
    out = d.astype(np.float32) / 1000.0
    out[np.isin(d, invalid)] = 0.0
    return out


def read_matrix(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Whitespace-separated numbers reshaped to ``shape`` (float64)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        vals = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{path}: not a whitespace-separated list of numbers ({e})") from None
    if vals.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: expected {int(np.prod(shape))} numbers ({'x'.join(map(str, shape))}), "
                           f"found {vals.size}")
    return vals.reshape(shape)


def read_pose_file(path: Path) -> np.ndarray:
    """4×4 ``T_world_cam`` from a text file, validated as rigid and projected onto SO(3)."""
    T = read_matrix(path, (4, 4))
    try:
        return validate_rigid(T, name=str(path))
    except NonRigidTransformError as e:
        raise DatasetError(str(e)) from None


def read_intrinsics(path: Path) -> np.ndarray:
    """3×3 K from a text file holding either the 9 entries of K or ``fx fy cx cy``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: intrinsics file is missing")
    try:
        vals = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{path}: intrinsics must be numbers (3x3 K or 'fx fy cx cy')") from None
    if vals.size == 9:
        K = vals.reshape(3, 3)
        if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0 or K[0, 1] != 0:
            raise DatasetError(f"{path}: not a pinhole K (expected [[fx 0 cx] [0 fy cy] [0 0 1]])")
        return K
    if vals.size == 4:
        fx, fy, cx, cy = vals
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    raise DatasetError(f"{path}: expected 9 numbers (3x3 K) or 4 (fx fy cx cy), found {vals.size}")


def resolve_camera(intrinsics, width: int, height: int, source: str) -> Camera:
    """A Camera for images of ``width``×``height`` from a Camera, a 3×3 K or an intrinsics file path.

    Raises DatasetError when the image size does not fit the intrinsics (principal point outside the image, or a
    Camera of another size). ``source`` names where the intrinsics came from (for errors)."""
    if isinstance(intrinsics, Camera):
        cam = intrinsics
        if (cam.width, cam.height) != (width, height):
            raise DatasetError(f"{source}: images are {width}x{height} but the camera is {cam.width}x{cam.height}")
    else:
        K = read_intrinsics(Path(intrinsics)) if isinstance(intrinsics, (str, Path)) else np.asarray(intrinsics)
        try:
            cam = Camera(width, height, K)
        except InvalidCameraError as e:
            raise DatasetError(f"{source}: {e}") from None
    if not (0 <= cam.cx < cam.width and 0 <= cam.cy < cam.height):
        raise DatasetError(f"{source}: principal point ({cam.cx:g}, {cam.cy:g}) lies outside the {width}x{height} "
                           "image: the intrinsics do not match the image size")
    return cam


def read_frame_list(frames, root: Path, known=None) -> list[str]:
    """Frame names from a list of names or a list file (absolute, or relative to ``root``); one name per line,
    blank lines and ``#`` comments ignored.

    Without ``known``, image/pose suffixes are stripped (7-Scenes names: ``seq-01/frame-000000``). With ``known``
    (the names the dataset itself uses, e.g. COLMAP's ``IMG_0001.jpg``), each listed name selects the known name it
    equals, else the one whose stem it equals (``IMG_0001`` or ``IMG_0001.png`` -> ``IMG_0001.jpg``); a name that
    selects none is a DatasetError listing the first few."""
    source = frames if isinstance(frames, (str, Path)) else "frame list"
    if isinstance(frames, (str, Path)):
        p = Path(frames)
        if not p.is_file() and (root / p).is_file():
            p = root / p
        if not p.is_file():
            raise DatasetError(f"{frames}: frame-list file is missing (looked in the working directory and {root})")
        lines = [ln.split("#")[0].strip() for ln in p.read_text().splitlines()]
        names = [ln.split()[0] for ln in lines if ln]
        if not names:
            raise DatasetError(f"{p}: frame list is empty")
        source = p
    else:
        names = [str(n) for n in frames]
    if known is None:
        return [strip_suffix(n) for n in names]
    return _select_known(names, known, source)


def _select_known(names: list[str], known, source) -> list[str]:
    """Each of ``names`` mapped to the member of ``known`` it equals, or whose stem equals its stem."""
    known = set(known)
    by_stem: dict[str, list[str]] = {}
    for k in known:
        by_stem.setdefault(strip_suffix(k), []).append(k)
    out, missing = [], []
    for n in names:
        if n in known:
            out.append(n)
            continue
        cands = by_stem.get(strip_suffix(n), [])
        if len(cands) == 1:
            out.append(cands[0])
        elif len(cands) > 1:
            raise DatasetError(f"{source}: {n!r} is ambiguous: the dataset has {sorted(cands)}")
        else:
            missing.append(n)
    if missing:
        raise DatasetError(f"{source}: {len(missing)} listed frame(s) are not in the dataset, e.g. {missing[:5]} "
                           f"(it has e.g. {sorted(known)[:3]})")
    return out


def strip_suffix(name: str) -> str:
    """``name`` without a trailing image / pose suffix (``.color.png``, ``.pose.txt``, ``.png``, ``.JPG``, ...)."""
    lower = name.lower()
    for suf in (".color.png", ".color.jpg", ".depth.png", ".pose.txt", ".png", ".jpg", ".jpeg"):
        if lower.endswith(suf):
            return name[: -len(suf)]
    return name


def check_image_size(img: np.ndarray, width: int, height: int, path: Path) -> None:
    if img.shape[1] != width or img.shape[0] != height:
        raise DatasetError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {width}x{height} "
                           "(the size of the first frame / the intrinsics)")
