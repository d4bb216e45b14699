"""Read the convolution weights of an ncnn model pair (``.param`` graph + ``.bin`` blobs) into tensors.

Only what the released Real-ESRGAN ncnn files use is accepted, and everything else is refused with a
line naming the file and the byte offset, so a different or damaged file can never load silently:

- ``.param``: magic ``7767517``, a ``layer_count blob_count`` line, then one layer per line
  (``type name n_in n_out in... out... key=value...``; a negative key holds an array). Of the layers
  only ``Convolution`` has weights; its keys ``0`` (output channels), ``1`` / ``11`` (kernel width /
  height), ``5`` (bias term) and ``6`` (weight count) give each blob's shape.
- ``.bin``: the blobs in layer order. A weight blob starts with a 4-byte flag: tag ``0x01306B47``
  is fp16 data (padded to 4 bytes), an all-zero flag raw fp32; a bias follows as raw fp32 (no flag).
  Quantised (int8, lookup-table) blobs are refused. The whole file must be consumed: a trailing or
  missing byte means the graph and the blobs disagree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.paths import UserError

PARAM_MAGIC = 7767517
FP16_TAG = 0x01306B47


class NcnnFormatError(UserError, ValueError):
    """The ncnn pair is not the plain fp16/fp32 convolution model this reader understands."""


@dataclass
class NcnnConv:
    """One ``Convolution`` layer of the graph: its name and weight shape (out, in, kh, kw)."""

    name: str
    out_ch: int
    in_ch: int
    kh: int
    kw: int
    bias: bool


def _layer_params(tokens: list[str], where: str) -> dict[int, str]:
    params = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        try:
            params[int(key)] = value
        except ValueError:
            raise NcnnFormatError(f"{where}: bad layer parameter {tok!r}") from None
        if not sep:
            raise NcnnFormatError(f"{where}: bad layer parameter {tok!r}")
    return params


def read_param(path) -> list[NcnnConv]:
    """The ``Convolution`` layers of a text ``.param`` file, in graph order."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise NcnnFormatError(f"{path}: not an ncnn .param file (first line must be {PARAM_MAGIC})")
    try:
        n_layers = int(lines[1][0])
    except (IndexError, ValueError):
        raise NcnnFormatError(f"{path}: second line must be 'layer_count blob_count'") from None
    if len(lines) - 2 != n_layers:
        raise NcnnFormatError(f"{path}: header announces {n_layers} layers, the file lists {len(lines) - 2}")
    convs = []
    for i, tok in enumerate(lines[2:], start=3):
        where = f"{path} line {i}"
        if len(tok) < 4:
            raise NcnnFormatError(f"{where}: truncated layer line")
        kind, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        params = _layer_params(tok[4 + n_in + n_out :], where)
        if kind != "Convolution":
            if kind not in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
                raise NcnnFormatError(f"{where}: layer type {kind} is not supported (it may hold weights)")
            continue
        out_ch, kw = int(params.get(0, 0)), int(params.get(1, 0))
        kh, size = int(params.get(11, kw)), int(params.get(6, 0))
        if out_ch <= 0 or kw <= 0 or kh <= 0 or size <= 0 or size % (out_ch * kh * kw):
            raise NcnnFormatError(f"{where}: {name} has an inconsistent shape (0={out_ch} 1={kw} 11={kh} 6={size})")
        if int(params.get(3, 1)) != 1 or int(params.get(2, 1)) != 1 or int(params.get(7, 1)) != 1:
            raise NcnnFormatError(f"{where}: {name} is strided, dilated or grouped, which is not supported")
        convs.append(NcnnConv(name, out_ch, size // (out_ch * kh * kw), kh, kw, params.get(5, "0") == "1"))
    return convs


class _Reader:
    """Sequential reads of the ``.bin`` with the offset in every error."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnFormatError(
                f"{self.path}: ends at byte {len(self.data)} inside {what} (needs {self.pos + n}); "
                "the .bin does not belong to this .param or is truncated"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def weights(self, count: int, what: str) -> torch.Tensor:
        start = self.pos
        flag = self.take(4, what)
        (tag,) = struct.unpack("<I", flag)
        if tag == FP16_TAG:
            raw = self.take(count * 2, what)
            self.take((-count * 2) % 4, what)  # ncnn pads fp16 blobs to 4 bytes
            return torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float32))
        if flag == b"\0\0\0\0":
            return self.floats(count, what)
        raise NcnnFormatError(
            f"{self.path}: {what} at byte {start} has storage flag {flag.hex()} (quantised or unknown); "
            "only fp16 and fp32 blobs are supported"
        )

    def floats(self, count: int, what: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self.take(count * 4, what), dtype="<f4").copy())


def read_conv_weights(param_path, bin_path) -> list[tuple[NcnnConv, torch.Tensor, torch.Tensor | None]]:
    """``[(layer, weight (out, in, kh, kw) fp32, bias (out,) fp32 or None)]``; the ``.bin`` is read to
    its last byte (an error names the file otherwise)."""
    convs = read_param(param_path)
    reader = _Reader(Path(bin_path))
    out = []
    for c in convs:
        w = reader.weights(c.out_ch * c.in_ch * c.kh * c.kw, f"the weight of {c.name}")
        b = reader.floats(c.out_ch, f"the bias of {c.name}") if c.bias else None
        out.append((c, w.reshape(c.out_ch, c.in_ch, c.kh, c.kw), b))
    if reader.pos != len(reader.data):
        raise NcnnFormatError(
            f"{bin_path}: {len(reader.data) - reader.pos} byte(s) left after the last layer of {param_path} "
            f"(read {reader.pos} of {len(reader.data)}); the pair does not match"
        )
    return out


__all__ = ["FP16_TAG", "NcnnConv", "NcnnFormatError", "PARAM_MAGIC", "read_conv_weights", "read_param"]
