"""Accelerator peaks in one place: dense bf16 FLOP/s, memory bandwidth, memory size, interconnect.

Used by the dry run (``common/dry_run.py``: memory verdicts, roofline step times, the bandwidth
collectives need) and by ``bench/gpu.py`` (MFU and decode floors of measured runs). Figures are
the vendors' data-sheet numbers, dense (no 2:4 sparsity), bf16 inputs with fp32 accumulation:

- H100 SXM5 80 GB: 989.4 TFLOP/s, HBM3 3.35 TB/s, NVLink 4 900 GB/s (both directions together)
  -- NVIDIA H100 Tensor Core GPU datasheet (2023), "H100 SXM" column.
- H100 PCIe 80 GB: 756 TFLOP/s, HBM2e 2.0 TB/s, NVLink bridge 600 GB/s -- same datasheet, "H100 PCIe".
- H100 NVL 94 GB: 835 TFLOP/s, HBM3 3.9 TB/s, NVLink bridge 600 GB/s -- same datasheet, "H100 NVL".
- H200 SXM 141 GB: 989.4 TFLOP/s, HBM3e 4.8 TB/s, NVLink 900 GB/s -- NVIDIA H200 datasheet (2024).
- A100 SXM4 80 GB / 40 GB: 312 TFLOP/s, HBM2e 2.039 / HBM2 1.555 TB/s, NVLink 3 600 GB/s
  -- NVIDIA A100 datasheet (2021), SXM columns; A100 80 GB PCIe: 312 TFLOP/s, 1.935 TB/s (PCIe column).
- GeForce RTX 4090 24 GB (the "24 GB consumer card"): 165.2 TFLOP/s (bf16 with fp32 accumulate),
  GDDR6X 1.008 TB/s, no NVLink (PCIe 4.0 x16, 32 GB/s each way) -- NVIDIA Ada GPU architecture
  whitepaper v2.1, appendix table 2.

``memory_gib`` is what the driver reports as total memory (``nvidia-smi`` MiB / 1024), which is
what a process can at most allocate; ``nvlink_gbs`` is the total of both directions as the data
sheets state it, so a ring collective moves data at ``nvlink_gbs / 2`` per GPU and direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """One accelerator model: what the dry run compares against and bench/gpu.py divides by."""

    key: str  # the name `dry_run=` takes
    name: str  # human name
    memory_gib: float  # device memory a process can use (driver total)
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    hbm_gbs: float  # memory bandwidth, GB/s
    nvlink_gbs: float  # GPU-to-GPU bandwidth, both directions, GB/s (PCIe for cards without NVLink)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12

    @property
    def link_bytes_per_s(self) -> float:
        """One direction of the GPU-to-GPU link (what a ring all-gather / reduce-scatter streams at)."""
        return self.nvlink_gbs * 1e9 / 2


DEVICES: dict[str, Device] = {
    d.key: d
    for d in (
        Device("h100", "H100 SXM5 80 GB", 81559 / 1024, 989.4, 3350.0, 900.0),
        Device("h100_pcie", "H100 PCIe 80 GB", 81559 / 1024, 756.0, 2000.0, 600.0),
        Device("h100_nvl", "H100 NVL 94 GB", 95830 / 1024, 835.0, 3900.0, 600.0),
        Device("h200", "H200 SXM 141 GB", 143771 / 1024, 989.4, 4800.0, 900.0),
        Device("a100_80", "A100 SXM4 80 GB", 81920 / 1024, 312.0, 2039.0, 600.0),
        Device("a100_80_pcie", "A100 PCIe 80 GB", 81920 / 1024, 312.0, 1935.0, 600.0),
        Device("a100_40", "A100 SXM4 40 GB", 40960 / 1024, 312.0, 1555.0, 600.0),
        Device("rtx4090", "RTX 4090 24 GB", 24564 / 1024, 165.2, 1008.0, 64.0),
    )
}
# The reference card for a plain number of GiB (`dry_run=16`): its speed figures are the H100's.
_GENERIC = DEVICES["h100"]


def get_device(spec) -> Device:
    """``h100 | h100_pcie | h200 | a100_80 | a100_40 | rtx4090`` or a memory size in GiB (``16``, ``24.5``).

    A bare size keeps the H100's FLOP/s and bandwidths (only the memory verdict depends on it)."""
    s = str(spec).strip().lower()
    if s in DEVICES:
        return DEVICES[s]
    try:
        gib = float(s.removesuffix("gib").removesuffix("gb"))
    except ValueError:
        raise ValueError(
            f"dry_run must be one of {' | '.join(DEVICES)} or a memory size in GiB, got {spec!r}"
        ) from None
    if gib <= 0:
        raise ValueError(f"dry_run memory must be > 0 GiB, got {spec!r}")
    return Device(f"{gib:g}gib", f"{gib:g} GiB card (H100 speeds)", gib, *_speeds(_GENERIC))


def _speeds(d: Device) -> tuple[float, float, float]:
    return d.bf16_tflops, d.hbm_gbs, d.nvlink_gbs


def device_from_name(cuda_name: str, total_bytes: int | None = None) -> Device:
    """The table row of a CUDA device name (``torch.cuda.get_device_name()``), e.g. "NVIDIA H100 PCIe".

    PCIe and SXM H100s differ by 30% in peak, so "PCIe" in the name picks the PCIe row; an
    unknown name gets the H100's speeds with its own memory size (``total_bytes``)."""
    n = cuda_name.lower()
    if "h200" in n:
        key = "h200"
    elif "h100" in n:
        key = "h100_pcie" if "pcie" in n else "h100_nvl" if "nvl" in n else "h100"
    elif "a100" in n:
        small = re.search(r"\b40\s*gb", n) or (total_bytes and total_bytes < 60 * 2**30)
        key = "a100_40" if small else "a100_80_pcie" if "pcie" in n else "a100_80"
    elif "4090" in n:
        key = "rtx4090"
    else:
        gib = (total_bytes or _GENERIC.memory_bytes) / 2**30
        return Device(f"{gib:.1f}gib", cuda_name, gib, *_speeds(_GENERIC))
    return DEVICES[key]
