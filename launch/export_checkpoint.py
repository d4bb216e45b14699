"""Export a training checkpoint (any backend, any world size) to the layout the official code loads.

    python launch/export_checkpoint.py app=varsr run_dir=runs/varsr out=runs/varsr/VARSR.pth
    python launch/export_checkpoint.py app=pure run_dir=runs/pure out=runs/pure/hf step=2000 ema=false

One process, model weights only: the sharded checkpoint (``common.train_state``; DCP shards of an
FSDP2/DDP run, or DeepSpeed ZeRO files through their universal form) is read for the model keys
(or the EMA average) alone, so no process ever holds optimizer state, and no GPU is needed.
VARSR writes ``varsr.official.export_official``'s ``.pth``; PURE writes HF safetensors shards +
config.json through ``pure.official.save_hf_shards`` (the same fields and dtype as the end-of-
training export). The model is rebuilt from the training config stored in the checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from common.config import run_app, to_dataclass  # noqa: E402
from common.logging import get_logger  # noqa: E402
from common.train_state import list_steps, load_model_only, read_meta, resumable, step_dir  # noqa: E402

log = get_logger("arsr.export")


@dataclass
class ExportConfig:
    app: str = "varsr"  # varsr | pure: which app trained the run
    run_dir: str = "???"  # the training run directory (holds checkpoints/step_<n>/)
    step: Optional[int] = None  # noqa: UP045 (OmegaConf schema)  checkpoint step to export; None = the newest good one
    out: str = "???"  # VARSR: a .pth (or .safetensors) file; PURE: a directory of HF shards
    ema: bool = True  # export the EMA average when the checkpoint has one, else the trained weights


def _checkpoint(cfg: ExportConfig) -> Path:
    if cfg.step is not None:
        path = step_dir(cfg.run_dir, cfg.step)
        if not path.is_dir():
            have = [s for s, _ in list_steps(cfg.run_dir)]
            raise FileNotFoundError(f"{path}: no such checkpoint (steps here: {have or 'none'})")
        return path
    good = resumable(cfg.run_dir)
    if not good:
        raise FileNotFoundError(f"{Path(cfg.run_dir) / 'checkpoints'}: no finished checkpoint to export")
    return good[0][0]


def _train_config(path: Path, schema: type, key: str = "config"):
    raw = read_meta(path).get("extra", {}).get(key)
    if raw is None:
        raise ValueError(f"{path / 'meta.json'}: no training config stored (checkpoint from an older version?)")
    node = OmegaConf.create(raw)  # VARSR stores YAML text, PURE a plain dict
    return to_dataclass(schema, OmegaConf.merge(OmegaConf.structured(schema), node))


def export_varsr(path: Path, cfg: ExportConfig) -> Path:
    from varsr.config import VARSRTrainConfig
    from varsr.model import build_models
    from varsr.official import export_official, load_official_vqvae

    tcfg = _train_config(path, VARSRTrainConfig)
    model, vqvae = build_models(tcfg.model, device="cpu")
    used_ema = load_model_only(path, model.state_dict(), ema=cfg.ema)
    if tcfg.init.vqvae:  # the frozen tokenizer is not part of training checkpoints
        load_official_vqvae(tcfg.init.vqvae, vqvae)
    else:
        vqvae = None
    out = export_official(model, vqvae, cfg.out)
    log.info(f"exported {path.name}{' (EMA)' if used_ema else ''} to {out}")
    return out


def export_pure(path: Path, cfg: ExportConfig) -> Path:
    from common.parallel import get_dtype
    from pure.build import build_lm
    from pure.config import PureTrainConfig
    from pure.official import read_hf_config, save_hf_shards

    tcfg = _train_config(path, PureTrainConfig)
    lm = build_lm(tcfg, torch.device("meta"), meta=True).to_empty(device="cpu")  # shapes only, no init weights
    sd = lm.state_dict()
    # The model entries are keyed by the training root (PureLoss wraps the LM as `lm`), the EMA by HF names.
    used_ema = load_model_only(path, sd, ema=cfg.ema, prefix="lm.")
    save_hf_shards(
        sd,
        cfg.out,
        max_shard_size=tcfg.export.max_shard_size,
        config=lm.config,
        vocabulary_map=getattr(lm.config, "vocabulary_map", None),
        dtype=get_dtype(tcfg.export.dtype),
        base_config=read_hf_config(tcfg.init.from_hf),
    )
    log.info(f"exported {path.name}{' (EMA)' if used_ema else ''} to {cfg.out}")
    return Path(cfg.out)


def run(cfg: ExportConfig) -> dict:
    if cfg.app not in ("varsr", "pure"):
        raise ValueError(f"app must be varsr | pure, got {cfg.app!r}")
    path = _checkpoint(cfg)
    out_res, run_res = Path(cfg.out).resolve(), Path(cfg.run_dir).resolve()
    if out_res == run_res or run_res in out_res.parents and "checkpoints" in out_res.relative_to(run_res).parts:
        raise ValueError(f"out={cfg.out} is inside the checkpoints it reads; choose another path")
    out = (export_varsr if cfg.app == "varsr" else export_pure)(path, cfg)
    return {"checkpoint": str(path), "out": str(out)}


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
