"""The torch device a user names (``"cpu"``, ``"cuda"``, ``"cuda:1"``), checked before any work is done."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["check_device", "torch_threads"]


def check_device(device) -> str:
    """``device`` as a string torch accepts; a ValueError naming it when it is not a device, or a CUDA device this
    torch build or machine does not have (instead of a torch error deep in the first forward pass)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device (expected 'cpu', 'cuda' or 'cuda:N')") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only 'cpu' and 'cuda[:N]' are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {device!r} requested but {why} (torch {torch.__version__}); use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(dev)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch intra-op threads set to ``n`` inside the block and restored after it; ``n`` None or 0: unchanged."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
