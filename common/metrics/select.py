"""Which metrics a sampling run can score: the selection, less what needs a missing HR folder.

Sampling launchers take a `metrics` selection (default PSNR + SSIM). Without `hr_dir` the
full-reference ones cannot be computed; rather than scoring nothing (a sweep over such a folder
would then have nothing to compare), a selection left empty that way falls back to NIQE, the
no-reference metric that needs no weight files. An explicitly empty selection (`metrics=[]`)
still means "do not score".
"""
from __future__ import annotations

from common.metrics.stack import FOLDER_LEVEL, FULL_REFERENCE

NO_REFERENCE_FALLBACK = "niqe"  # no weights needed; needs outputs of at least 96 px (its 96-px patches)


def scorable_metrics(requested, has_hr: bool) -> list[str]:
    """Metric names to score for a run with (``has_hr``) or without a GT folder."""
    names = [str(m) for m in (requested or [])]  # a dict from the `metrics` config group gives its keys
    if has_hr or not names:
        return names
    kept = [m for m in names if m not in FULL_REFERENCE and m not in FOLDER_LEVEL]
    return kept or [NO_REFERENCE_FALLBACK]


__all__ = ["NO_REFERENCE_FALLBACK", "scorable_metrics"]
