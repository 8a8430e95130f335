"""Is bf16 autocast worth it on this device?

On an x86 CPU without AVX-512 BF16 or AMX, PyTorch has no bf16 matrix kernels and converts element by
element: measured side by side on an AVX2-only AMD EPYC (``benchmarks/bf16_speed.py``), a training step
in bf16 autocast took 15-18x as long as in fp32. On a CPU with AVX-512 BF16 it took 0.5x. So a run that
asks for bf16 on a CPU without it is told once, by name, instead of silently running for a day.
"""

from __future__ import annotations

import logging
import platform

import torch

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def bf16_is_native(device: str | torch.device | None = None) -> bool:
    """True where bf16 matmuls run in hardware (a bf16-capable GPU, an x86 CPU with AVX-512 BF16 or
    AMX); False on an x86 CPU without either. Unknown hardware (another architecture, a torch
    without the probes) counts as native: nothing to warn about that we could not check.
    ``None``: the device moore runs on by default, the GPU if there is one."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if callable(probe)]
    return not probes or any(probe() for probe in probes)


def warn_if_bf16_is_slow(device: str | torch.device | None, setting: str, advice: str | None = None) -> bool:
    """Log one warning per process and setting when bf16 autocast is asked for on a device that
    emulates it; ``setting`` names the switch (e.g. ``training.bf16``), ``advice`` replaces the
    default "turn it off". True if it warned."""
    if bf16_is_native(device) or setting in _warned:
        return False
    _warned.add(setting)
    advice = advice or (f"Turn {setting} off on this machine (scores in bf16 and fp32 matched within noise in "
                        f"moore's benchmarks), or run where bf16 is native (a recent GPU, or a CPU with "
                        f"AVX-512 BF16 or AMX).")
    logger.warning("%s is on, but this CPU has neither AVX-512 BF16 nor AMX: PyTorch emulates bf16 matmuls here, "
                   "and a training step in bf16 autocast took 15-18x as long as in fp32 on such a CPU. %s",
                   setting, advice)
    return True
