"""Loading and exporting PURE's released checkpoints.

- `load_hf_shards`: the HF Chameleon safetensors shards of `nonwhy/PURE` into our
  `ChameleonForCausalLM`, strictly, one shard at a time; works on a `meta`-built model
  (tensors are assigned, so a 7B never exists twice and never in fp32 unless asked).
- `save_hf_shards`: the inverse (sharded safetensors + index + config.json) in the layout the
  official/HF code loads; with `base_config` (the starting checkpoint's config.json, read by
  `read_hf_config`) every field of it is kept (`merged_hf_config`), `vocabulary_map` included.
- `load_llamagen_vq`: LlamaGen's `vq_ds8_c2i.pt` (`{"model": state_dict}`, weights_only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import atomic_write_bytes, save_safetensors_atomic
from pure.model.config import ChameleonConfig, hf_config_dict

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
IGNORED_PREFIXES = ("model.vqmodel.",)  # Chameleon's own VQGAN: unused by PURE, absent from its shards
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # ignored prefixes (model.vqmodel.*)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _shard_files(ckpt_dir: Path) -> list[Path]:
    if ckpt_dir.is_file():
        if ckpt_dir.name.endswith(".index.json"):
            index_path, ckpt_dir = ckpt_dir, ckpt_dir.parent
        else:
            return [ckpt_dir]
    else:
        index_path = ckpt_dir / INDEX_NAME
    if not index_path.is_file():
        if (ckpt_dir / SINGLE_NAME).is_file():
            return [ckpt_dir / SINGLE_NAME]
        raise FileNotFoundError(f"no {INDEX_NAME} or {SINGLE_NAME} in {ckpt_dir}")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{index_path}: not a safetensors index with a weight_map ({exc})") from None
    files = [ckpt_dir / name for name in dict.fromkeys(weight_map.values())]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{index_path} lists shards that do not exist: {absent}")
    return files


def _slot(model: nn.Module, name: str):
    mod_name, _, attr = name.rpartition(".")
    return model.get_submodule(mod_name) if mod_name else model, attr


def load_hf_shards(
    model: nn.Module,
    ckpt_dir,
    strict: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    gather=None,
) -> LoadReport:
    """Fill `model` from an HF checkpoint directory (index + shards, or one model.safetensors).

    Each tensor is read once from its shard onto `device`. Parameters still on `meta` are
    replaced by the loaded tensor (keeping the shard dtype unless `dtype` is given);
    materialised parameters are copied into (casting to their dtype). `model.vqmodel.*` keys
    are skipped. With `strict`, missing or unexpected keys and shape mismatches raise.

    `gather(params)`: for a model whose parameters are partitioned over ranks (ZeRO-3), a context
    manager that makes `params` whole and yields whether this rank writes them (the others only
    take part in the collective, in the same key order, and never read the tensor)."""
    import contextlib

    from safetensors import safe_open

    ckpt_dir = Path(ckpt_dir)
    targets = dict(model.named_parameters())
    targets.update(
        {
            n: b
            for n, b in model.named_buffers()
            if n.rpartition(".")[2] not in getattr(_slot(model, n)[0], "_non_persistent_buffers_set", set())
        }
    )
    report = LoadReport()
    for file in _shard_files(ckpt_dir):
        with _open_shard(safe_open, file, device) as f:
            for key in f.keys():
                if key.startswith(IGNORED_PREFIXES):
                    report.skipped.append(key)
                    continue
                if key not in targets:
                    report.unexpected.append(key)
                    continue
                cur = targets[key]
                with contextlib.nullcontext(True) if gather is None else gather([cur]) as write:
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(cur.shape):
                        raise ValueError(f"{file.name}: {key} has shape {shape}, model expects {tuple(cur.shape)}")
                    if write:
                        t = f.get_tensor(key)
                        _assign(model, key, cur, t if dtype is None else t.to(dtype))
                report.loaded.append(key)
    done = set(report.loaded)
    report.missing = [k for k in targets if k not in done]
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"strict load of {ckpt_dir} failed: missing {len(report.missing)} "
            f"{report.missing[:4]}, unexpected {len(report.unexpected)} {report.unexpected[:4]}"
        )
    return report


def _open_shard(safe_open, file: Path, device):
    """safe_open that names the file: safetensors' own errors ("HeaderTooLarge") do not."""
    try:
        return safe_open(str(file), framework="pt", device=str(device))
    except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
        raise ValueError(
            f"{file}: not a readable safetensors shard ({type(exc).__name__}: {exc}); "
            "download it again or re-export the checkpoint"
        ) from None


@torch.no_grad()
def _assign(model: nn.Module, key: str, cur: torch.Tensor, t: torch.Tensor) -> None:
    module, attr = _slot(model, key)
    if cur.is_meta:
        if isinstance(cur, nn.Parameter):
            module._parameters[attr] = nn.Parameter(t, requires_grad=cur.requires_grad)
        else:
            module._buffers[attr] = t
    else:
        cur.copy_(t)


def parse_size(size: int | str) -> int:
    """Bytes from an int or "5GB"/"500MB"/"2GiB" (decimal units as HF uses, binary with 'i')."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse shard size {size!r} (use bytes or e.g. '5GB')")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def _write_json(obj, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def save_hf_shards(
    model_or_state_dict,
    out_dir,
    max_shard_size: int | str = "5GB",
    config: ChameleonConfig | None = None,
    vocabulary_map: dict | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
    base_config: dict | None = None,
) -> Path:
    """Write `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` (+ config.json
    when `config` is given) into `out_dir`; return the index path.

    `base_config`: the `config.json` of the checkpoint training started from. Every field of it
    is kept as it was (the official `from_pretrained` needs e.g. `vocabulary_map`, and fields we
    do not model must survive); only what the new weights change is rewritten (`vocab_size`
    after a vocabulary extension, `torch_dtype`), and fields it lacks are added from `config`.

    Tensors are cast per shard (`dtype=None` keeps them), so peak extra memory is one shard.
    Every file is written atomically, the index last (an older export's index is removed first);
    shards of an older export that the new index does not reference are removed afterwards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The index is what loaders open, written last: remove an older export's first, so a killed export
    # never leaves new shards under an old index (same file names, mixed weights) that loads as complete.
    (out_dir / INDEX_NAME).unlink(missing_ok=True)
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = {k: v for k, v in sd.items() if torch.is_tensor(v) and not k.startswith(IGNORED_PREFIXES)}
    limit = parse_size(max_shard_size)

    def item(t):  # bytes of t once cast to the export dtype
        return (dtype or t.dtype).itemsize * t.numel()

    shards: list[list[str]] = [[]]
    size = 0
    for k, t in sd.items():
        if shards[-1] and size + item(t) > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += item(t)
    n = len(shards)
    weight_map, names = {}, []
    for i, keys in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        tensors = {k: (sd[k] if dtype is None else sd[k].to(dtype)) for k in keys}
        save_safetensors_atomic(tensors, out_dir / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
        names.append(name)
        del tensors
    if config is not None:
        torch_dtype = str(dtype or next(iter(sd.values())).dtype).removeprefix("torch.")
        _write_json(
            merged_hf_config(hf_config_dict(config, vocabulary_map, torch_dtype), base_config), out_dir / "config.json"
        )
    index = out_dir / INDEX_NAME
    _write_json({"metadata": {"total_size": sum(item(t) for t in sd.values())}, "weight_map": weight_map}, index)
    for stale in out_dir.iterdir():
        if _SHARD_RE.match(stale.name) and stale.name not in names:
            stale.unlink()
    return index


def check_hf_shards(out_dir, keys) -> None:
    """Raise ValueError unless ``out_dir`` is a complete export of exactly ``keys``: the index names
    every key once, each shard it names opens (header within the file) and holds exactly its keys."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    weight_map = json.loads((out_dir / INDEX_NAME).read_text())["weight_map"]
    want = {k for k in keys if not k.startswith(IGNORED_PREFIXES)}
    if set(weight_map) != want:
        raise ValueError(f"{out_dir / INDEX_NAME}: names {len(weight_map)} tensors, the model has {len(want)}")
    for file in _shard_files(out_dir):
        with _open_shard(safe_open, file, "cpu") as f:
            have = set(f.keys())
        if have != {k for k, v in weight_map.items() if v == file.name}:
            raise ValueError(f"{file}: holds other tensors than {INDEX_NAME} says")


def read_hf_config(ckpt_dir) -> dict | None:
    """The `config.json` next to HF shards (None when `ckpt_dir` is unset or has none)."""
    if not ckpt_dir:
        return None
    path = Path(ckpt_dir)
    path = (path if path.is_dir() else path.parent) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def merged_hf_config(ours: dict, base: dict | None) -> dict:
    """`base` with every field kept, plus the fields only `ours` has; the weight-describing
    `vocab_size` and `torch_dtype` come from `ours` (the exported tensors)."""
    if not base:
        return ours
    out = dict(base)
    out.update({k: v for k, v in ours.items() if k not in base})
    out.update(vocab_size=ours["vocab_size"], torch_dtype=ours["torch_dtype"])
    return out


def load_llamagen_vq(vq: nn.Module, path, strict: bool = True) -> nn.Module:
    """Load LlamaGen's `vq_ds8_c2i.pt` ({"model": state_dict, ...}; other entries ignored)
    with weights_only=True. A meta-built VQ is materialised by assignment."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQ checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # custom pickled classes or a truncated file
        raise ValueError(f"{path}: cannot be loaded with weights_only=True ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise ValueError(
            f"{path}: expected a dict with a 'model' state dict (LlamaGen format), "
            f"got keys {list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__}"
        )
    sd = blob["model"]
    is_meta = any(p.is_meta for p in vq.parameters())
    try:
        result = vq.load_state_dict(sd, strict=strict, assign=is_meta)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"{path}: state dict does not match the VQ model: {' '.join(first)}") from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        vq.load_report = result
    return vq
