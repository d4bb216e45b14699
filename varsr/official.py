"""Loading and exporting the released VARSR checkpoints (spec varsr.md sections 1 and 7).

`VARSR.pth` / `VQVAE.pth` are trainer dicts; the weights sit at ['trainer']['var_wo_ddp'] and
['trainer']['vae_local'].  Everything loads with weights_only=True (or from safetensors).  If a
file's pickle holds non-tensor objects (an `Args` namespace), the loader fails with one line
pointing at the converter, which is the only code here that unpickles:

    python -m varsr.official convert VARSR.pth VARSR.safetensors   # trusted files only

The converter flattens nested dicts with '/' between nesting levels, so
'trainer/var_wo_ddp/<param>' in the safetensors file maps back to the same place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from common.checkpoint import atomic_save, save_safetensors_atomic
from common.paths import UserError

from .parallelize import unwrap as _bare  # bare module under DDP

VAR_KEY, VAE_KEY = ("trainer", "var_wo_ddp"), ("trainer", "vae_local")
# Tolerated shape mismatch (official loader does the same): VQVAE usage statistics per scale.
_TOLERATED = ("quantize.ema_vocab_hit_SV",)


class CheckpointError(UserError, RuntimeError):
    """One-line, user-facing checkpoint problem (the launchers print it and exit 2)."""


def _read(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the .pth/.safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError ("HeaderTooLarge") does not name the file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # custom classes in the pickle, or a corrupt file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: not loadable with weights_only=True ({first[:160]}); if you trust this file, run "
            f"`python -m varsr.official convert {path} {path.with_suffix('.safetensors')}` and load that"
        ) from None


def _extract(obj: dict, nest: tuple[str, ...], path) -> dict[str, torch.Tensor]:
    """State dict at `nest` of a trainer dict, a '/'-flattened safetensors dict, or a flat dict."""
    cur: Any = obj
    if all(k in cur for k in nest[:1]):
        for k in nest:
            if not isinstance(cur, dict) or k not in cur:
                raise CheckpointError(
                    f"{path}: missing key {'/'.join(nest)}; not the checkpoint this key expects "
                    "(VQVAE.pth given for the transformer, or the reverse?)"
                )
            cur = cur[k]
        return dict(cur)
    prefix = "/".join(nest) + "/"
    if any(k.startswith(prefix) for k in obj):
        return {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix)}
    if any("/" in k for k in obj):
        raise CheckpointError(f"{path}: no '{prefix}*' tensors in this converted file")
    return dict(obj)  # already a plain state dict (e.g. our export of one module)


def _is_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


def load_state_strict(module: nn.Module, sd: dict[str, torch.Tensor], path, tolerate=_TOLERATED) -> None:
    """Strict load with a one-line error; tolerated keys with a shape mismatch keep the module's value."""
    own = module.state_dict()
    sd = dict(sd)
    for k in tolerate:
        if k in sd and k in own and sd[k].shape != own[k].shape:
            sd.pop(k)
    missing = [k for k in own if k not in sd and k not in tolerate]
    unexpected = [k for k in sd if k not in own]
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:

        def few(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")

        raise CheckpointError(
            f"{path}: state dict does not match the model: missing [{few(missing)}] "
            f"unexpected [{few(unexpected)}] shape [{few(bad)}]"
        )
    meta = _is_meta(module)
    module.load_state_dict(sd, strict=False, assign=meta)
    if meta:  # a tolerated key left a meta buffer behind: give it real (zero) storage
        for name, buf in list(module.named_buffers()):
            if buf.is_meta:
                owner, _, leaf = name.rpartition(".")
                module.get_submodule(owner)._buffers[leaf] = torch.zeros(buf.shape, dtype=buf.dtype)


def load_official_varsr(path, model: nn.Module) -> nn.Module:
    """Load VARSR.pth (['trainer']['var_wo_ddp']) strictly into a VARSR (meta-built models welcome)."""
    load_state_strict(model, _extract(_read(path), VAR_KEY, path), path, tolerate=())
    return model


def load_official_c2i(path, model: nn.Module) -> nn.Module:
    """Load VARSR_C2I.pth (['trainer']['var_wo_ddp']) strictly into a C2I model (lr_prefix=False).

    The released file matches `model_config("c2i_d24")` (3831 classes incl. null, 12 scales).
    """
    cfg = getattr(_bare(model), "cfg", None)
    if cfg is None or cfg.lr_prefix:
        raise CheckpointError(
            f"{path}: a C2I checkpoint needs a C2I model (lr_prefix=False, e.g. "
            "model_config('c2i_d24')); to start SR training from it use transfer_from_c2i"
        )
    return load_official_varsr(path, model)


def load_official_vqvae(path, vqvae: nn.Module) -> nn.Module:
    """Load VQVAE.pth (['trainer']['vae_local']) strictly; `ema_vocab_hit_SV` shape may differ."""
    load_state_strict(vqvae, _extract(_read(path), VAE_KEY, path), path)
    return vqvae


def transfer_from_c2i(model: nn.Module, path_or_sd) -> dict[str, list[str]]:
    """Initialise an SR model from a class-to-image checkpoint (VARSR_C2I.pth, VAR var_d*.pth).

    Spec 7: class_emb keeps its first `num_classes` rows; every other shape-mismatched key
    (pos_start, lvl_embed, mask/level buffers) and every unknown key (VAR's pos_1LC) is dropped,
    so con_embedding / pos_start stay at their init.  Returns {kept, truncated, dropped, missing}.
    """
    if isinstance(path_or_sd, (str, Path)):
        sd = _extract(_read(path_or_sd), VAR_KEY, path_or_sd)
    else:
        sd = dict(path_or_sd)
        if "trainer" in sd:
            sd = dict(sd["trainer"]["var_wo_ddp"])
    own = model.state_dict()
    load, report = {}, {"kept": [], "truncated": [], "dropped": [], "missing": []}
    for k, v in sd.items():
        if k not in own:
            report["dropped"].append(k)
        elif v.shape == own[k].shape:
            load[k] = v
            report["kept"].append(k)
        elif k == "class_emb.weight" and v.shape[1:] == own[k].shape[1:] and v.shape[0] >= own[k].shape[0]:
            load[k] = v[: own[k].shape[0]].clone()
            report["truncated"].append(k)
        else:
            report["dropped"].append(k)
    report["missing"] = [k for k in own if k not in load]
    model.load_state_dict(load, strict=False)
    return report


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor -> full tensor


def export_official(model: nn.Module, vqvae: nn.Module | None, path) -> Path:
    """Write the official trainer layout ({'trainer': {'var_wo_ddp', 'vae_local'}}) atomically.

    A `.safetensors` path writes the '/'-flattened form instead (loadable by the loaders above).
    """
    trainer = {"var_wo_ddp": {k: _full(v).detach().cpu() for k, v in _bare(model).state_dict().items()}}
    if vqvae is not None:
        trainer["vae_local"] = {k: v.detach().cpu() for k, v in _bare(vqvae).state_dict().items()}
    if str(path).endswith(".safetensors"):
        flat = {f"trainer/{sub}/{k}": v for sub, d in trainer.items() for k, v in d.items()}
        return save_safetensors_atomic(flat, path, metadata={"format": "varsr-official"})
    return atomic_save({"trainer": trainer}, path)


def _flatten_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip("/")] = obj.detach().contiguous().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                out.update(_flatten_tensors(v, f"{prefix}{k}/"))
    return out


def convert(src, dst) -> Path:
    """Trusted-file converter: unpickle `src` fully, keep only the model tensors, write safetensors."""
    print(
        f"WARNING: unpickling {src} with weights_only=False executes code stored in the file; "
        "only do this for files you trust (e.g. the official HF release qyp2000/VARSR).",
        file=sys.stderr,
    )
    # One of the repo's two trusted-only unpickling sites (the other: pure.pretokenize.convert_official).
    obj = torch.load(src, map_location="cpu", weights_only=False)
    trainer = obj.get("trainer", {}) if isinstance(obj, dict) else {}
    keep = {k: trainer[k] for k in ("var_wo_ddp", "vae_local") if k in trainer}
    flat = _flatten_tensors({"trainer": keep}) if keep else _flatten_tensors(obj)
    if not flat:
        raise CheckpointError(f"{src}: no tensors found")
    return save_safetensors_atomic(flat, dst, metadata={"source": Path(src).name})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m varsr.official")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="trusted .pth -> .safetensors (model tensors only)")
    c.add_argument("src")
    c.add_argument("dst")
    args = ap.parse_args(argv)
    out = convert(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
