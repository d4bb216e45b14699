"""Which metrics a sampling run can score: the selection, less what needs a missing HR folder.

Sampling launchers take a `metrics` selection (default PSNR + SSIM). Without `hr_dir` the
full-reference ones cannot be computed; rather than scoring nothing (a sweep over such a folder
would then have nothing to compare), a selection left empty that way falls back to NIQE, the
no-reference metric that needs no weight files. An explicitly empty selection (`metrics=[]`)
still means "do not score".
"""

from __future__ import annotations

from pathlib import Path

from common.metrics.stack import FOLDER_LEVEL, FULL_REFERENCE

NO_REFERENCE_FALLBACK = "niqe"  # no weights needed
NIQE_MIN_SIDE = 96  # NIQE works on 96-px patches; pyiqa fails on smaller images


def _smallest_side(folder) -> int | None:
    from PIL import Image

    from common.data.io import is_image_file

    sides = []
    for p in Path(folder).iterdir():
        if is_image_file(p):
            try:
                with Image.open(p) as im:  # reads the header only
                    sides.append(min(im.size))
            except OSError:  # unreadable: the scoring skips and counts it, it sets no size here
                continue
    return min(sides) if sides else None


def scorable_metrics(requested, has_hr: bool, out_dir=None) -> list[str]:
    """Metric names to score for a run with (``has_hr``) or without a GT folder.

    The NIQE fallback is dropped (with a log line) when an output in ``out_dir`` is smaller than
    NIQE's patch: a tiny run ends with its images written, not with a traceback."""
    names = [str(m) for m in (requested or [])]  # a dict from the `metrics` config group gives its keys
    if has_hr or not names:
        return names
    kept = [m for m in names if m not in FULL_REFERENCE and m not in FOLDER_LEVEL]
    if kept:
        return kept
    side = _smallest_side(out_dir) if out_dir is not None and Path(out_dir).is_dir() else None
    if side is not None and side < NIQE_MIN_SIDE:
        from common.logging import get_logger

        get_logger("metrics").warning(
            "no hr_dir and outputs of %d px (< %d): not scored (NIQE needs %d px)", side, NIQE_MIN_SIDE, NIQE_MIN_SIDE
        )
        return []
    return [NO_REFERENCE_FALLBACK]


__all__ = ["NIQE_MIN_SIDE", "NO_REFERENCE_FALLBACK", "scorable_metrics"]


def score_run(cfg, out_dir, skipped: int, device) -> dict:
    """Score a folder run's own outputs (the sampling apps and the baseline tool share this tail):
    the metrics :func:`scorable_metrics` keeps of ``cfg.metrics`` over ``out_dir`` against
    ``cfg.hr_dir``, written to ``cfg.metrics_out`` or inside ``out_dir`` (a run never writes beside
    its output folder). Skipped inputs have no output, so extra HR files are allowed then.
    Returns the scores, ``{}`` when nothing can be scored."""
    from common.metrics import evaluate_folders
    from common.paths import read_back_limit

    metrics = scorable_metrics(cfg.metrics, cfg.hr_dir is not None, out_dir)
    if not metrics:
        return {}
    out_json = Path(cfg.metrics_out or Path(out_dir) / "metrics.json")
    return evaluate_folders(
        out_dir,
        cfg.hr_dir,
        metrics,
        out_json,
        device=str(device),
        allow_extra_hr=bool(skipped),
        max_input_pixels=read_back_limit(cfg),
        out_beside_images=cfg.metrics_out is None,
    )
