"""Score a folder of outputs (against GT when given) with the frozen metric stack.

    python launch/evaluate.py sr_dir=DIR hr_dir=DIR metrics=[psnr,ssim] out=FILE.json
    python launch/evaluate.py sr_dir=DIR metrics=nr out=FILE.json weights_dir=/path/to/weights

``metrics`` is a Hydra config group (configs/common/metrics/): one file per metric recording
its pinned variant, plus presets ``fr``, ``paired`` and ``nr`` (the columns of the tables).

Writes FILE.json (metric -> mean, pyiqa version, metric variants), FILE_per_image.csv and
FILE.md (one Markdown table row). Pairing is by file name; a missing, extra or size-mismatched
file stops the run with one line naming it; an unreadable file is skipped with a warning naming it.
FILE.json may not go into sr_dir or hr_dir. Exit codes: 0 all scored, 3 scored but unreadable files
were skipped (listed in FILE.json), 2 a user error (one line; ARSR_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import run_app  # noqa: E402  (+ the shared search path)
from common.metrics.config import EvaluateConfig, MetricSpec  # noqa: E402,F401  (schemas live in a package)
from common.paths import UserError, exit_code  # noqa: E402


def run(cfg: EvaluateConfig) -> dict:
    import torch

    from common.metrics import evaluate_folders

    metrics = list(cfg.metrics)
    if not metrics:
        raise ValueError("no metrics selected (metrics=[psnr,ssim] or metrics=paired)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    return evaluate_folders(
        cfg.sr_dir,
        cfg.hr_dir,
        metrics,
        cfg.out,
        device=device,
        weights_dir=cfg.weights_dir,
        crop_border=cfg.crop_border,
        set_name=cfg.set_name,
        show_progress=cfg.progress,
        overwrite=cfg.overwrite,
        max_input_pixels=cfg.max_input_pixels,
    )


def run_and_print(cfg: EvaluateConfig) -> dict:
    try:
        summary = run(cfg)
    except ImportError as e:  # a metric's optional package: the user installs it
        raise UserError(f"evaluate: {e}; install that package or drop the metric") from None
    print(
        json.dumps(
            {
                "set": summary["set"],
                "n_images": summary["n_images"],
                "skipped": summary["skipped"],
                "mean": summary["mean"],
            },
            indent=2,
        )
    )
    return summary  # a sweep's summary callback (common.sweep) tabulates it


def main(argv: list[str] | None = None) -> dict:
    return run_app("common", "evaluate", EvaluateConfig, run_and_print, argv, typed=False)


if __name__ == "__main__":
    sys.exit(exit_code(main()))
