"""Make an (HR, LR) pair folder from HR images with a degradation preset.

    python launch/degrade.py hr_dir=DIR out_dir=DIR degradation=realesrgan seed=0 [crop=512]

Writes out_dir/HR/, out_dir/LR/ (same names, LR exactly 1/scale of HR) and out_dir/params.jsonl.
Keys and their meaning: DegradeConfig in common/degradation/folder.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import to_dataclass  # noqa: E402  (also registers the shared config search path)
from common.degradation.folder import DegradeConfig, degrade_folder  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs/common", config_name="degrade")
def main(cfg: DictConfig) -> None:
    try:
        degrade_folder(to_dataclass(DegradeConfig, cfg))
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, not a traceback
        sys.exit(f"degrade: {e}")


if __name__ == "__main__":
    main()
