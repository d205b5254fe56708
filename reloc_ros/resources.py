"""Files the code loads at run time (config/*.yaml, config/fastdds_shm.xml, launch/*.py), wherever reloc_ros is
installed: a checkout (the sources in place), a pip / wheel install (``<prefix>/share/reloc_ros``, setup.py's
data_files) or a colcon install (the ament share directory)."""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["share_dirs", "share_file"]

CHECKOUT = Path(__file__).resolve().parents[1]


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("reloc_ros"))
    except Exception:  # noqa: BLE001 - ament_index is absent with the pip wheels, or the package is not indexed
        return None


def share_dirs() -> list[Path]:
    """Where the package's data files may be, in the order searched."""
    dirs = [CHECKOUT, Path(sys.prefix) / "share" / "reloc_ros", _ament_share()]
    return [d for d in dirs if d is not None]


def share_file(relative: str) -> Path:
    """``relative`` (e.g. ``config/localizer.yaml``) in the first of ``share_dirs()`` that has it;
    FileNotFoundError naming the places searched otherwise."""
    for base in share_dirs():
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"{relative} not found in {', '.join(map(str, share_dirs()))} "
                            "(is reloc_ros installed with its data files?)")
