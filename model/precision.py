"""Mixed precision: when bf16 autocast pays, and one way in for training and sampling.

On CUDA, bf16 autocast is the usual choice. On a CPU, whether it pays is measured, not read off a
flag: on a 2-core AMD EPYC (AVX512-BF16) a denoiser training step took 79 ms in bf16 against 129 in
fp32, but on a 2-core Xeon with AMX the step took the same in both (its time is outside the matrix
products), and without native bf16 it is emulated and slower. So "auto" on a CPU with native bf16
times a transformer block's forward + backward in both and takes bf16 only where it is at least
AUTO_BF16_MIN_SPEEDUP faster (bench/RESULTS.md has the figures). Here it is measured once per
process; the pipeline steps pass `bf16_speedup` = the machine's recorded measurement
(tasks/checkpoint.py), so every process, rank and resumed run of a machine takes the same precision.

Weights, optimizer state, the residual stream, norms, softmax and losses stay fp32 under autocast;
the model's outputs are returned as fp32. On CPU the bf16 kernels are deterministic, like fp32 ones.
"""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Callable

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where the CPU advertises bf16 arithmetic (x86 avx512_bf16 or amx_bf16; Linux only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(torch.backends.mkldnn.is_available()) and bool({"avx512_bf16", "amx_bf16"} & set(flags))


AUTO_BF16_MIN_SPEEDUP = 1.2   # far from both measured cases (1.6x AMD, 1.0x Xeon AMX): timing noise does not flip it


def block_seconds(dtype: torch.dtype | None, dim: int = 128, tokens: int = 256, batch: int = 16,
                  repeats: int = 5) -> float:
    """Median seconds of one TransformerBlock forward + backward under autocast `dtype` (None: fp32)."""
    from .layers import TransformerBlock

    times = []
    with torch.inference_mode(False), torch.enable_grad():   # also when asked from inside sampling's no_grad
        g = torch.Generator().manual_seed(0)
        block = TransformerBlock(dim, heads=4)
        x, c = torch.randn(batch, tokens, dim, generator=g), torch.randn(batch, dim, generator=g)
        for _ in range(repeats + 1):   # the first round warms the kernels up
            t0 = time.perf_counter()
            with autocast("cpu", dtype):
                out = block(x, c)
            out.float().square().mean().backward()
            times.append(time.perf_counter() - t0)
    return sorted(times[1:])[repeats // 2]


def measure_bf16_speedup() -> float:
    """fp32 time / bf16 time of `block_seconds` on this CPU (~1 s), leaving the global RNG alone."""
    with torch.random.fork_rng():
        return block_seconds(None) / block_seconds(torch.bfloat16)


@functools.lru_cache(maxsize=1)
def measured_bf16_speedup() -> float:
    """This process's `measure_bf16_speedup`, made once."""
    return measure_bf16_speedup()


def autocast_dtype(precision: str, device: torch.device | str,
                   bf16_speedup: Callable[[], float] | None = None) -> torch.dtype | None:
    """"auto" | "bf16" | "fp32" on a device -> the autocast dtype, or None for full fp32.
    `bf16_speedup` gives this CPU's measured bf16 speed-up for "auto" (default: measured here, once)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    speedup = bf16_speedup or measured_bf16_speedup
    return torch.bfloat16 if cpu_has_native_bf16() and speedup() >= AUTO_BF16_MIN_SPEEDUP else None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on the device's type; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
