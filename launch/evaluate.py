"""Score a folder of outputs (against GT when given) with the frozen metric stack.

    python launch/evaluate.py sr_dir=DIR hr_dir=DIR metrics=[psnr,ssim] out=FILE.json
    python launch/evaluate.py sr_dir=DIR metrics=nr out=FILE.json weights_dir=/path/to/weights

``metrics`` is a Hydra config group (configs/common/metrics/): one file per metric recording
its pinned variant, plus presets ``fr``, ``paired`` and ``nr`` (the columns of the tables).

Writes FILE.json (metric -> mean, pyiqa version, metric variants), FILE_per_image.csv and
FILE.md (one Markdown table row). Pairing is by file name; a missing, extra or size-mismatched
file stops the run with one line naming it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import validate  # noqa: E402  (also registers the shared config search path)

@dataclass
class MetricSpec:
    """One entry of the ``metrics`` group (configs/common/metrics/<name>.yaml)."""

    pyiqa: str = "ours"  # backend: pyiqa metric name, or "ours" (common.metrics.fr)
    variant: str = ""  # the pinned variant, as recorded in the result JSON
    better: str = "higher"  # higher | lower


@dataclass
class EvaluateConfig:
    """Folder evaluation."""

    sr_dir: str = "???"  # folder of outputs to score
    hr_dir: Optional[str] = None  # GT folder with the same file names (None: no-reference metrics only)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)  # group selection: metric name -> spec
    out: str = "???"  # summary JSON path; <stem>_per_image.csv and <stem>.md are written beside it
    set_name: Optional[str] = None  # label of the Markdown row (default: sr_dir's folder name)
    device: str = "auto"  # auto | cpu | cuda (learned metrics only)
    weights_dir: Optional[str] = None  # local metric weights (layout: common/metrics/learned.py)
    crop_border: int = 0  # pixels cropped from each border for PSNR/SSIM (papers: 0)
    progress: bool = True  # show a progress bar


def run(cfg: EvaluateConfig) -> dict:
    import torch

    from common.metrics import evaluate_folders

    metrics = list(cfg.metrics)
    if not metrics:
        raise ValueError("no metrics selected (metrics=[psnr,ssim] or metrics=paired)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    return evaluate_folders(cfg.sr_dir, cfg.hr_dir, metrics, cfg.out, device=device, weights_dir=cfg.weights_dir,
                            crop_border=cfg.crop_border, set_name=cfg.set_name, show_progress=cfg.progress)


@hydra.main(version_base="1.3", config_path="../configs/common", config_name="evaluate")
def main(raw: DictConfig) -> dict:
    cfg = validate(EvaluateConfig, raw)
    try:
        summary = run(cfg)
    except (ValueError, FileNotFoundError, ImportError) as e:  # pairing/weights/config: one line, no traceback
        raise SystemExit(f"evaluate: {e}") from None
    print(json.dumps({"set": summary["set"], "n_images": summary["n_images"], "mean": summary["mean"]}, indent=2))
    return summary  # a sweep's summary callback (common.sweep) tabulates it


if __name__ == "__main__":
    main()
