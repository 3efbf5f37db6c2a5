"""Device and mixed precision: bf16 autocast where the hardware does bf16 natively."""

from __future__ import annotations

import contextlib
from functools import cache

import torch


@cache
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: CPU bf16 matmuls are then faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8.0) or newer. Older GPUs (V100, T4) only emulate bf16, which
    ``torch.cuda.is_bf16_supported()`` counts by default: there it is slower than fp32."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 where the GPU or CPU does it natively, else fp32 (None = no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else None
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
