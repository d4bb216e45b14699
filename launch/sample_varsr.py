"""VARSR super-resolution of a folder (thin entry point; logic in varsr.evaluate).

    python launch/sample_varsr.py lr_dir=data/RealSR/LR hr_dir=data/RealSR/HR
    python launch/sample_varsr.py -m cfg=4,6,8 lr_dir=...          # sweep, one run dir per value
    python launch/sample_varsr.py model=tiny ckpt=RUN/export/VARSR.pth vae_ckpt=RUN/export/VQVAE.pth ...
    torchrun --nproc_per_node=8 launch/sample_varsr.py lr_dir=... out_dir=OUT/sr   # split across ranks

Exit codes: 0 every image done, 3 done but unreadable inputs were skipped (each named in the log),
2 a user error (one line on stderr; ARSR_DEBUG=1 shows the traceback). README "Bad input".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.config import run_app  # noqa: E402
from common.paths import exit_code, sampling_out_dir  # noqa: E402
from varsr.dry_run import SAMPLE  # noqa: E402
from varsr.evaluate import SampleRunConfig, register_configs, run_sampling  # noqa: E402


def sample_view(cfg, hydra_cfg=None) -> dict:
    """The composed config with its default output folder filled in (common.paths.sampling_out_dir)."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    out["out_dir"] = sampling_out_dir(out.get("out_dir"), hydra_cfg, int(os.environ.get("WORLD_SIZE", "1")))
    return out


def main(argv: list[str] | None = None) -> dict:
    register_configs()
    return run_app("varsr", "sample", SampleRunConfig, run_sampling, argv, view=sample_view, dry_run=SAMPLE)


if __name__ == "__main__":
    sys.exit(exit_code(main()))
