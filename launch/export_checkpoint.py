"""Export a training checkpoint (any backend, any world size) to the layout the official code loads.

    python launch/export_checkpoint.py app=varsr run_dir=runs/varsr out=runs/varsr/VARSR.pth
    python launch/export_checkpoint.py app=pure run_dir=runs/pure out=runs/pure/hf step=2000 ema=false

One process, model weights only: the sharded checkpoint (``common.train_state``; DCP shards of an
FSDP2/DDP run, or DeepSpeed ZeRO files through their universal form) is read for the model keys
(or the EMA average) alone, so no process ever holds optimizer state, and no GPU is needed.
VARSR writes ``varsr.official.export_official``'s ``.pth``; PURE writes HF safetensors shards +
config.json through ``pure.official.save_hf_shards`` (the same fields and dtype as the end-of-
training export). The model is rebuilt from the training config stored in the checkpoint.

Safe to run beside the training (``common.publish``, ``common.train_state``): the output is built
in a temporary sibling, verified and swapped in whole (an existing ``out`` is refused unless
``overwrite=true``; never a mix of two steps); the step's checksums are verified first and a step
whose weights are not finite is never exported (without ``step=`` the previous good one is used);
a step the trainer prunes while it is read is replaced by the newest finished one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from common.config import run_app, to_dataclass  # noqa: E402
from common.integrity import params_finite  # noqa: E402
from common.logging import get_logger  # noqa: E402
from common.paths import UserError  # noqa: E402
from common.publish import publish  # noqa: E402
from common.train_state import list_steps, load_model_only, read_meta, resumable, step_dir  # noqa: E402

log = get_logger("arsr.export")


@dataclass
class ExportConfig:
    app: str = "varsr"  # varsr | pure: which app trained the run
    run_dir: str = "???"  # the training run directory (holds checkpoints/step_<n>/)
    step: Optional[int] = None  # noqa: UP045 (OmegaConf schema)  checkpoint step to export; None = the newest good one
    out: str = "???"  # VARSR: a .pth (or .safetensors) file; PURE: a directory of HF shards
    ema: bool = True  # export the EMA average when the checkpoint has one, else the trained weights
    overwrite: bool = False  # replace an existing `out` as a whole (file or folder); false: refuse it


def _candidates(cfg: ExportConfig) -> list[Path]:
    """The step to export (``step=``), or every good finished step, newest first (checksums verified)."""
    if cfg.step is not None:
        path = step_dir(cfg.run_dir, cfg.step)
        if not path.is_dir():
            have = [s for s, _ in list_steps(cfg.run_dir)]
            raise FileNotFoundError(f"{path}: no such checkpoint (steps here: {have or 'none'})")
        return [path]
    good = resumable(cfg.run_dir, checksums=False)  # the checksums are verified by the load itself
    if not good:
        raise FileNotFoundError(f"{Path(cfg.run_dir) / 'checkpoints'}: no finished checkpoint to export")
    return [p for p, _ in good]


def _finite(model, path: Path) -> None:
    """Parameters only: buffers may hold -inf on purpose (attention masks)."""
    if not params_finite(model):
        raise ValueError(f"{path}: the weights hold NaN/inf (a diverged step); not exporting it")


def _train_config(path: Path, schema: type, key: str = "config"):
    raw = read_meta(path).get("extra", {}).get(key)
    if raw is None:
        raise ValueError(f"{path / 'meta.json'}: no training config stored (checkpoint from an older version?)")
    node = OmegaConf.create(raw)  # VARSR stores YAML text, PURE a plain dict
    return to_dataclass(schema, OmegaConf.merge(OmegaConf.structured(schema), node))


def export_varsr(path: Path, cfg: ExportConfig, out: Path) -> Path:
    from varsr.config import VARSRTrainConfig
    from varsr.model import build_models
    from varsr.official import export_official, load_official_vqvae

    tcfg = _train_config(path, VARSRTrainConfig)
    model, vqvae = build_models(tcfg.model, device="cpu")
    used_ema = load_model_only(path, model.state_dict(), ema=cfg.ema)
    _finite(model, path)
    if tcfg.init.vqvae:  # the frozen tokenizer is not part of training checkpoints
        load_official_vqvae(tcfg.init.vqvae, vqvae)
    else:
        vqvae = None
    export_official(model, vqvae, Path(str(out) + Path(cfg.out).suffix))  # the suffix picks .pth / .safetensors
    os.replace(str(out) + Path(cfg.out).suffix, out)
    log.info(f"exported {path.name}{' (EMA)' if used_ema else ''}")
    return out


def export_pure(path: Path, cfg: ExportConfig, out: Path) -> Path:
    from common.parallel import get_dtype
    from pure.build import build_lm
    from pure.config import PureTrainConfig
    from pure.official import check_hf_shards, read_hf_config, save_hf_shards

    tcfg = _train_config(path, PureTrainConfig)
    lm = build_lm(tcfg, torch.device("meta"), meta=True).to_empty(device="cpu")  # shapes only, no init weights
    sd = lm.state_dict()
    # The model entries are keyed by the training root (PureLoss wraps the LM as `lm`), the EMA by HF names.
    used_ema = load_model_only(path, sd, ema=cfg.ema, prefix="lm.")
    _finite(lm, path)
    save_hf_shards(
        sd,
        out,
        max_shard_size=tcfg.export.max_shard_size,
        config=lm.config,
        vocabulary_map=getattr(lm.config, "vocabulary_map", None),
        dtype=get_dtype(tcfg.export.dtype),
        base_config=read_hf_config(tcfg.init.from_hf),
    )
    check_hf_shards(out, sd)  # every tensor of the model in the index, every shard whole (before the swap)
    log.info(f"exported {path.name}{' (EMA)' if used_ema else ''}")
    return out


def run(cfg: ExportConfig) -> dict:
    if cfg.app not in ("varsr", "pure"):
        raise ValueError(f"app must be varsr | pure, got {cfg.app!r}")
    out_res, run_res = Path(cfg.out).resolve(), Path(cfg.run_dir).resolve()
    if out_res == run_res or run_res in out_res.parents and "checkpoints" in out_res.relative_to(run_res).parts:
        raise ValueError(f"out={cfg.out} is inside the checkpoints it reads; choose another path")
    export = export_varsr if cfg.app == "varsr" else export_pure
    tried = []
    for _ in range(5):  # a trainer may prune the step being read: take the newest finished one again
        for path in _candidates(cfg):
            if path.name in tried:
                continue
            try:
                other = read_meta(path).get("app")
                if other and other != cfg.app:
                    raise UserError(f"run_dir={cfg.run_dir} belongs to {other}, not {cfg.app}: set app={other}")
                publish(cfg.out, lambda tmp, p=path: export(p, cfg, tmp), None, cfg.overwrite, "out")
                return {"checkpoint": str(path), "out": str(cfg.out)}
            except (ValueError, OSError) as e:
                pruned = not path.is_dir()
                if (
                    isinstance(e, UserError)
                    or not (pruned or isinstance(e, ValueError))
                    or not (pruned or cfg.step is None)
                ):
                    raise  # a user error, a full disk, an unwritable out, or the bad step you asked for
                if cfg.step is not None:
                    raise FileNotFoundError(
                        f"{path}: pruned by the training run while being read; choose a kept step"
                    ) from None
                tried.append(path.name)
                why = "was pruned by the training run while being read" if pruned else f"is bad ({e})"
                log.warning(f"{path.name} {why}; taking the newest finished step instead")
                break
    raise FileNotFoundError(f"{Path(cfg.run_dir) / 'checkpoints'}: no checkpoint could be exported (tried {tried})")


def main(argv: list[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    res = run_app("common", "export_checkpoint", ExportConfig, run, args)  # user errors: one line, exit 2
    if res:
        print(f"{res['checkpoint']} -> {res['out']}")
    return res


if __name__ == "__main__":
    main()
