"""VARSR super-resolution of a folder (thin Hydra entry point; logic in varsr.evaluate).

    python launch/sample_varsr.py lr_dir=data/RealSR/LR hr_dir=data/RealSR/HR
    python launch/sample_varsr.py -m cfg=4,6,8 lr_dir=...          # sweep, one run dir per value
    python launch/sample_varsr.py model=tiny ckpt=RUN/export/VARSR.pth vae_ckpt=RUN/export/VQVAE.pth ...
    torchrun --nproc_per_node=8 launch/sample_varsr.py lr_dir=...   # split across ranks by index
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import to_dataclass  # noqa: E402  (also registers the shared config search path)
from varsr.evaluate import SampleRunConfig, register_configs, run_sampling  # noqa: E402

register_configs()


@hydra.main(config_path="../configs/varsr", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    run_cfg = to_dataclass(SampleRunConfig, cfg)
    return run_sampling(run_cfg, default_out=Path(HydraConfig.get().runtime.output_dir) / "sr")


if __name__ == "__main__":
    main()
