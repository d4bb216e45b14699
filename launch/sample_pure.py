"""PURE restoration of a folder (thin entry point; logic in pure.evaluate / pure.restore).

    python launch/sample_pure.py lr_dir=data/RealSR/LR hr_dir=data/RealSR/HR
    python launch/sample_pure.py -m cfg=0.8,1.0 temperature=0.7,0.9 lr_dir=...   # sweep (out_dir/<overrides>/sr)
    python launch/sample_pure.py sjd.enabled=true sjd.window=16 lr_dir=...        # SJD
    torchrun --nproc_per_node=8 launch/sample_pure.py lr_dir=... out_dir=OUT/sr     # split by index

Experiment files (`+exp=...`) are shared with training; their training-only keys (run, optim,
data, ...) are ignored here, except that `run.device` fills `device`, and an optional `sample:`
block in the experiment (like its `pretokenize:` block) sets sampling keys for that experiment,
e.g. `sample: {resolution: 128, vq_ckpt: null}`. Keys given on the command line always win over
both (`+exp=quick vq_ckpt=my_vq.pt` uses my_vq.pt).

Exit codes: 0 every image done, 3 done but unreadable inputs were skipped (each named in the log),
2 a user error (one line on stderr; ARSR_DEBUG=1 shows the traceback). README "Bad input".
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.config import apply_preset, cli_keys, run_app  # noqa: E402
from common.paths import exit_code, sampling_out_dir  # noqa: E402
from pure.dry_run import SAMPLE  # noqa: E402
from pure.evaluate import PureSampleConfig, register_configs, run_restore  # noqa: E402


def sample_view(cfg, hydra_cfg=None) -> dict:
    """Keep the keys PureSampleConfig knows; apply the experiment's `sample:` block and its
    `run.device` below the command line (``hydra_cfg.overrides.task``); fill the output folder."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True)
    known = {f.name for f in dataclasses.fields(PureSampleConfig)}
    out = {k: v for k, v in raw.items() if k in known}
    block = raw.get("sample") or {}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"sample_pure: unknown keys {unknown} in the experiment's `sample:` block")
    given = cli_keys(hydra_cfg.overrides.task) if hydra_cfg is not None else set()
    device = (raw.get("run") or {}).get("device")
    if device and out.get("device", "auto") == "auto":
        block = {"device": device, **block}
    out = apply_preset(out, block, given)
    ignored = sorted(k for k in raw if k not in known and k not in ("hydra", "sample"))
    if ignored:
        print(f"sample_pure: ignoring training-only keys {ignored}")  # stdout: stderr is for errors (one line)
    out["out_dir"] = sampling_out_dir(out.get("out_dir"), hydra_cfg, int(os.environ.get("WORLD_SIZE", "1")))
    return out


def main(argv: list[str] | None = None) -> dict:
    register_configs()
    return run_app("pure", "sample", PureSampleConfig, run_restore, argv, view=sample_view, dry_run=SAMPLE)


if __name__ == "__main__":
    sys.exit(exit_code(main()))
