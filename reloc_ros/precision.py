"""Mixed-precision contexts for inference and training: ``"fp32"`` (none), ``"bf16"`` (CPU and CUDA; ~2-6x faster
matmuls on CPUs with AVX-512 BF16 / AMX), ``"fp16"`` (CUDA only)."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast_context"]

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_context(device: str, precision: str):
    """torch.autocast for "bf16" / "fp16" (fp16 only on CUDA); a null context for "fp32"."""
    dev = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=dev, dtype=torch.bfloat16)
    if precision == "fp16":
        if dev != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        return torch.autocast(device_type=dev, dtype=torch.float16)
    raise ValueError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
