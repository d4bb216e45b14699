"""The papers' baseline rows over a folder: Real-ESRGAN x4plus or bicubic (thin entry point; logic in
common.baseline.folder, keys documented in its BaselineConfig).

    python launch/sample_baseline.py lr_dir=LR hr_dir=HR out_dir=OUT                  # Real-ESRGAN x4plus
    python launch/sample_baseline.py method=bicubic lr_dir=LR hr_dir=HR out_dir=OUT
    python launch/sample_baseline.py -m method=bicubic,realesrgan lr_dir=LR hr_dir=HR  # one table, both rows
    python launch/sample_baseline.py lr_dir=LR weights=RealESRGAN_x4plus.pth           # the official .pth

The weights default to the ncnn pair `make setup` fetched into the cache (see README, Data and
checkpoints). Exit codes: 0 every image done, 3 done but unreadable inputs were skipped (each named in
the log), 2 a user error (one line on stderr; ARSR_DEBUG=1 shows the traceback). README "Bad input".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.baseline.folder import BaselineConfig, register_configs, run_baseline  # noqa: E402
from common.config import run_app  # noqa: E402
from common.paths import exit_code  # noqa: E402


def sample_view(cfg, hydra_cfg=None) -> dict:
    """The composed config with its default output folder filled in (common.paths.sampling_out_dir)."""
    from omegaconf import OmegaConf

    from common.paths import sampling_out_dir

    out = OmegaConf.to_container(cfg, resolve=True)
    out["out_dir"] = sampling_out_dir(out.get("out_dir"), hydra_cfg)
    return out


def main(argv: list[str] | None = None) -> dict:
    register_configs()
    return run_app("common", "sample_baseline", BaselineConfig, run_baseline, argv, view=sample_view)


if __name__ == "__main__":
    sys.exit(exit_code(main()))
