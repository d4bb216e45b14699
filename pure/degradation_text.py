"""Degradation-level sentences for PURE training targets ("Medium blur, small noise.").

PURE's assistant answer starts with a sentence naming the blur and noise level of the LQ image
(spec pure.md §4.1). The paper scores them with MM-RealSR's Degradation Estimation Module,
whose settings are not published. When we make the pairs ourselves we know the exact sampled
degradation, so we derive the two scores analytically from `common.degradation`'s per-image
parameter dicts (`DegradationResult.params`). For pairs made elsewhere, any object following
the `DegradationEstimator` protocol can supply the scores instead (e.g. `ScoreFileEstimator`
reading a user-provided JSONL/CSV of `id, blur, noise`).

Mapping (ours, documented because the official one is unknown). Everything is expressed in
pixels of the final LQ image (H/4), since that is what a DEM would look at:

blur: an equivalent Gaussian sigma, summed in quadrature over the blurs that hit the signal
    - kernel1 at HR scale: sigma_1 / 4 (Gaussian-family: geometric mean sqrt(sx*sy); the shape
      parameter beta is ignored -- it changes tails, not width, to first order);
    - kernel2 (only if the second blur happened) acts at the stage-1 output scale s1 (HR-relative),
      i.e. one pixel there is 1/(4*s1) LQ pixels: sigma_2 / (4*s1);
    - sinc kernels (low-pass with cutoff w) count as sigma = 0.5*pi/w (w = pi -> 0.5 px, i.e.
      almost transparent; w = pi/5 -> 2.5 px); the final sinc acts at LQ scale directly;
    - a resolution bottleneck b = min(1, 4*s1, s2) (stage-2 size relative to the LQ size) loses
      detail like a blur of sigma = 0.5*sqrt(1/b^2 - 1).
    blur_score = clip((sigma_total - BLUR_SIGMA[0]) / (BLUR_SIGMA[1] - BLUR_SIGMA[0]), 0, 1).
noise: an equivalent additive std in 8-bit units at LQ scale
    - Gaussian sigma as sampled (already x255); Poisson scale s counts as 11.3*s (the std of
      Poisson(x*256)/256 - x at mid-grey x=0.5, times 255);
    - stage-1 noise is averaged down when the image later shrinks to the LQ size: divided by
      max(1, 4*s1); stage-2 noise likewise by max(1, s2);
    - JPEG ringing/blocking adds a noise-like term (95 - q)/65 * 4 per stage (q=30 -> 4 units).
    noise_score = clip((std_total - NOISE_STD[0]) / (NOISE_STD[1] - NOISE_STD[0]), 0, 1).
Calibration: BLUR_SIGMA = (0.45, 1.55) LQ px and NOISE_STD = (5, 28) put the terciles of the
`realesrgan` preset (2,000 draws) at the bucket edges, so its pairs split into about equal
thirds small/medium/large on each axis; `varsr_mild` pairs then lean towards small/medium.
Buckets: [0, 1/3) small, [1/3, 2/3) medium, [2/3, 1] large (MM-RealSR / PURE issue #6).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

BLUR_SIGMA = (0.45, 1.55)  # LQ-pixel sigma mapped to score 0 and 1
NOISE_STD = (5.0, 28.0)  # 8-bit std mapped to score 0 and 1
POISSON_STD_PER_SCALE = 255.0 * math.sqrt(0.5 / 256.0)  # ≈ 11.3
LEVELS = ("small", "medium", "large")


def level_name(score: float) -> str:
    """Bucket a score in [0, 1]: [0, 1/3) small, [1/3, 2/3) medium, [2/3, 1] large."""
    if not (0.0 <= score <= 1.0) or math.isnan(score):
        raise ValueError(f"degradation score must be in [0, 1], got {score}")
    # Compare with 3*score so the boundaries 1/3 and 2/3 fall exactly into the upper bucket.
    return LEVELS[min(int(3.0 * score + 1e-9), 2)]


def sentence_from_scores(blur: float, noise: float) -> str:
    """ "<Blur-level> blur, <noise-level> noise." with the first word capitalised (PURE figure)."""
    return f"{level_name(blur).capitalize()} blur, {level_name(noise)} noise."


# --------------------------------------------------------------------------------------------
# Parameter dicts -> scores


def _get(d: Mapping[str, Any], *names: str, default=None):
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _kernel_sigma(k: Mapping[str, Any] | None) -> float:
    """Equivalent Gaussian sigma (in the pixels of the scale the kernel is applied at)."""
    if not k:
        return 0.0
    family = str(_get(k, "kernel_type", "family", "type", default=""))
    if "sinc" in family or _get(k, "omega_c", "cutoff") is not None and "sigma_x" not in k:
        w = float(_get(k, "omega_c", "cutoff", default=math.pi))
        return 0.5 * math.pi / max(w, 1e-6)
    sx = float(_get(k, "sigma_x", "sigma", default=0.0))
    sy = float(_get(k, "sigma_y", default=sx))
    return math.sqrt(max(sx, 0.0) * max(sy, 0.0))


def _noise_std(n: Mapping[str, Any] | None) -> float:
    if not n:
        return 0.0
    kind = str(_get(n, "noise_type", "type", default="gaussian"))
    if kind.startswith("poisson"):
        return POISSON_STD_PER_SCALE * float(_get(n, "poisson_scale", "scale", default=0.0))
    return float(_get(n, "sigma", "noise_sigma", default=0.0))


def _jpeg_term(q) -> float:
    if q is None:
        return 0.0
    return max(0.0, 95.0 - float(q)) / 65.0 * 4.0


@dataclass
class DegradationScores:
    """Blur / noise scores in [0, 1] plus the physical quantities they came from."""

    blur: float
    noise: float
    blur_sigma_lq: float = float("nan")
    noise_std_255: float = float("nan")

    def sentence(self) -> str:
        return sentence_from_scores(self.blur, self.noise)


def scores_from_params(params: Mapping[str, Any]) -> DegradationScores:
    """Scores from one `common.degradation` per-image params dict (see module docstring).

    Reads `kernel1`, `kernel2`, `sinc` (family / sigma_x / sigma_y / omega_c), `stage1` and
    `stage2` (resize_scale, noise, noise_sigma, poisson_scale, jpeg_quality; stage2.blur says
    whether kernel2 was applied) and `final.jpeg_quality`. Missing pieces count as not applied.
    """
    st1 = _get(params, "stage1", default={}) or {}
    st2 = _get(params, "stage2", default={}) or {}
    fin = _get(params, "final", default={}) or {}
    k1 = _get(params, "kernel1")
    k2 = _get(params, "kernel2") if bool(_get(st2, "blur", default=False)) else None
    sinc = _get(params, "sinc", "sinc_kernel")
    s1 = max(float(_get(st1, "resize_scale", default=1.0)), 1e-3)  # relative to the HR size
    s2 = max(float(_get(st2, "resize_scale", default=1.0)), 1e-3)  # relative to the LQ size
    noise1 = {
        "noise_type": _get(st1, "noise", default="gaussian"),
        "sigma": _get(st1, "noise_sigma", default=0.0),
        "poisson_scale": _get(st1, "poisson_scale", default=0.0),
    }
    noise2 = {
        "noise_type": _get(st2, "noise", default="gaussian"),
        "sigma": _get(st2, "noise_sigma", default=0.0),
        "poisson_scale": _get(st2, "poisson_scale", default=0.0),
    }
    jpeg1, jpeg2 = _get(st1, "jpeg_quality"), _get(fin, "jpeg_quality")

    b = min(1.0, 4.0 * s1, s2)
    sig_resize = 0.5 * math.sqrt(max(0.0, 1.0 / b**2 - 1.0))
    sig = math.sqrt(
        (_kernel_sigma(k1) / 4.0) ** 2
        + (_kernel_sigma(k2) / (4.0 * s1)) ** 2
        + _kernel_sigma(sinc) ** 2
        + sig_resize**2
    )
    std = math.sqrt(
        (_noise_std(noise1) / max(1.0, 4.0 * s1)) ** 2
        + (_noise_std(noise2) / max(1.0, s2)) ** 2
        + _jpeg_term(jpeg1) ** 2
        + _jpeg_term(jpeg2) ** 2
    )
    return DegradationScores(
        blur=min(max((sig - BLUR_SIGMA[0]) / (BLUR_SIGMA[1] - BLUR_SIGMA[0]), 0.0), 1.0),
        noise=min(max((std - NOISE_STD[0]) / (NOISE_STD[1] - NOISE_STD[0]), 0.0), 1.0),
        blur_sigma_lq=sig,
        noise_std_255=std,
    )


def degradation_sentence(params: Mapping[str, Any]) -> str:
    """Contract entry point: per-image params dict -> "Medium blur, small noise."."""
    return scores_from_params(params).sentence()


# --------------------------------------------------------------------------------------------
# Estimators for pairs we did not degrade ourselves


@runtime_checkable
class DegradationEstimator(Protocol):
    """Anything that scores an LQ image's blur and noise in [0, 1].

    `lq` is (3, H, W) in [0, 1] (may be ignored), `image_id` the record id, `params` the
    sampled degradation if known. Returns DegradationScores.
    """

    def __call__(self, lq=None, image_id: str | None = None, params: Mapping | None = None) -> DegradationScores: ...


class ParamEstimator:
    """Scores from the sampled degradation parameters (our own pairs)."""

    def __call__(self, lq=None, image_id=None, params=None) -> DegradationScores:
        if params is None:
            raise ValueError(f"ParamEstimator needs the degradation params (image {image_id!r})")
        return scores_from_params(params)


class ScoreFileEstimator:
    """Looks up user-provided scores: JSONL lines {"id", "blur", "noise"} or CSV with those columns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.table: dict[str, tuple[float, float]] = {}
        if not self.path.is_file():
            raise FileNotFoundError(f"degradation score file not found: {self.path}")
        with open(self.path, newline="") as f:
            rows = csv.DictReader(f) if self.path.suffix == ".csv" else (json.loads(l) for l in f if l.strip())
            for i, row in enumerate(rows):
                try:
                    self.table[str(row["id"])] = (float(row["blur"]), float(row["noise"]))
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{self.path}: row {i} needs id, blur, noise ({e})") from None

    def __call__(self, lq=None, image_id=None, params=None) -> DegradationScores:
        if str(image_id) not in self.table:
            raise KeyError(f"image id {image_id!r} not in degradation score file {self.path}")
        blur, noise = self.table[str(image_id)]
        return DegradationScores(blur=blur, noise=noise)


class ConstantEstimator:
    """Deterministic stub for tests and for data without any degradation information."""

    def __init__(self, blur: float = 0.0, noise: float = 0.0):
        self.scores = DegradationScores(blur=blur, noise=noise)

    def __call__(self, lq=None, image_id=None, params=None) -> DegradationScores:
        return self.scores
