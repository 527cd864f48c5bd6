"""Accelerator peaks: the one table of dense bf16 throughput and memory per device.

MFU = achieved model FLOP/s (cgpt.model.flops_per_token_mfu × tokens/s) / peak below.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpt.model.errors import CgptError


@dataclass(frozen=True)
class Device:
    name: str
    bf16_flops: float  # dense bf16 peak, FLOP/s (vendor datasheet, no sparsity)
    memory_bytes: int  # usable HBM
    aliases: tuple[str, ...] = ()


GiB = 1024**3

DEVICES: dict[str, Device] = {
    d.name: d
    for d in [
        # H100 SXM: 989 TFLOP/s dense bf16 (docs/REFERENCE.md, Throughput references)
        Device("h100", 989e12, 80 * GiB, ("h100-sxm", "h100 80gb hbm3", "nvidia h100")),
        Device("h100-pcie", 756e12, 80 * GiB, ("h100 pcie",)),
        Device("h200", 989e12, 141 * GiB, ("nvidia h200",)),
        Device("a100", 312e12, 80 * GiB, ("a100-80gb", "a100-sxm4-80gb", "nvidia a100")),
        Device("a100-40gb", 312e12, 40 * GiB, ("a100-sxm4-40gb",)),
        Device("l40s", 362e12, 48 * GiB, ("nvidia l40s",)),
        Device("a10g", 125e12, 24 * GiB, ("nvidia a10g",)),
        Device("v100", 125e12, 32 * GiB, ("tesla v100",)),  # fp16 tensor-core peak (no bf16)
        Device("mi300x", 1307e12, 192 * GiB, ("amd instinct mi300x",)),
        Device("b200", 2250e12, 180 * GiB, ("nvidia b200",)),
    ]
}


def get_device(name: str) -> Device:
    key = name.strip().lower()
    for d in DEVICES.values():
        if key == d.name or key in d.aliases:
            return d
    raise CgptError(f"unknown GPU {name!r}; known: {', '.join(DEVICES)}")


def detect_device(cuda_name: str) -> Device | None:
    """Match torch.cuda.get_device_name() (e.g. 'NVIDIA H100 80GB HBM3') to the table."""
    low = cuda_name.lower()
    if "h100" in low:
        return DEVICES["h100-pcie" if "pcie" in low else "h100"]
    for key in ("h200", "b200", "mi300x", "l40s", "a10g", "v100"):
        if key in low:
            return DEVICES[key]
    if "a100" in low:
        return DEVICES["a100-40gb" if "40gb" in low else "a100"]
    return None


def detect_peak_flops() -> float | None:
    """Peak bf16 FLOP/s of the current CUDA device, or None (CPU / unknown GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    dev = detect_device(torch.cuda.get_device_name())
    return dev.bf16_flops if dev else None
