"""PURE restoration of a folder (thin Hydra entry point; logic in pure.evaluate / pure.restore).

    python launch/sample_pure.py lr_dir=data/RealSR/LR hr_dir=data/RealSR/HR
    python launch/sample_pure.py -m cfg=0.8,1.0 temperature=0.7,0.9 lr_dir=...   # sweep (out_dir/<overrides>/sr)
    python launch/sample_pure.py sjd.enabled=true sjd.window=16 lr_dir=...        # SJD
    torchrun --nproc_per_node=8 launch/sample_pure.py lr_dir=... out_dir=OUT/sr     # split by index

Experiment files (`+exp=...`) are shared with training; their training-only keys (run, optim,
data, ...) are ignored here, except that `run.device` fills `device` when it was left at auto,
and an optional `sample:` block in the experiment (like its `pretokenize:` block) sets sampling
keys for that experiment, e.g. `sample: {resolution: 128, vq_ckpt: null}`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import to_dataclass  # noqa: E402  (also registers the shared config search path)
from pure.evaluate import PureSampleConfig, register_configs, run_restore  # noqa: E402

register_configs()


def sample_view(cfg: DictConfig) -> dict:
    """Keep the keys PureSampleConfig knows; borrow the device from a training `run` block and
    apply an experiment's `sample:` block."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    known = {f.name for f in dataclasses.fields(PureSampleConfig)}
    out = {k: v for k, v in raw.items() if k in known}
    block = raw.get("sample") or {}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"sample_pure: unknown keys {unknown} in the experiment's `sample:` block")
    out.update(block)
    run = raw.get("run") or {}
    if out.get("device", "auto") == "auto" and run.get("device"):
        out["device"] = run["device"]
    ignored = sorted(k for k in raw if k not in known and k not in ("hydra", "sample"))
    if ignored:
        print(f"sample_pure: ignoring training-only keys {ignored}", file=sys.stderr)
    return out


@hydra.main(config_path="../configs/pure", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    import os

    run_cfg = to_dataclass(PureSampleConfig, sample_view(cfg))
    if run_cfg.out_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each rank gets its own Hydra run dir (a timestamp), so the shards would scatter
        raise SystemExit("sample_pure: under torchrun give out_dir=... so every rank writes to the same folder")
    hc = HydraConfig.get()
    if run_cfg.out_dir is not None and str(hc.mode) == "RunMode.MULTIRUN":
        # a sweep with one out_dir: give each job its own sub-folder (cfg=0.8,temperature=0.7/...)
        run_cfg.out_dir = str(Path(run_cfg.out_dir) / (hc.job.override_dirname or f"job{hc.job.num}") / "sr")
    return run_restore(run_cfg, default_out=Path(hc.runtime.output_dir) / "sr")


if __name__ == "__main__":
    main()
