"""Degradation presets: the Real-ESRGAN second-order pipeline's parameters as one dataclass.

Two presets mirror the official recipes (spec common.md §1.6):
``realesrgan`` = Real-ESRGAN x4plus / SeeSR offline pairs / OSEDiff, and ``varsr_mild`` = the
milder per-sample class VARSR trains with (LR resized back to GT size, no USM).  The yaml files
in ``configs/common/degradation/`` hold the same values for Hydra; a test keeps them in sync.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.config import PROBABILITY, RANGE, at_least, checks

KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _pair(lo: float, hi: float):
    return field(default_factory=lambda: [lo, hi])


@checks(
    sinc_prob=PROBABILITY,
    sinc_prob2=PROBABILITY,
    final_sinc_prob=PROBABILITY,
    gaussian_noise_prob=PROBABILITY,
    gray_noise_prob=PROBABILITY,
    second_blur_prob=PROBABILITY,
    gaussian_noise_prob2=PROBABILITY,
    gray_noise_prob2=PROBABILITY,
    final_order_prob=PROBABILITY,
    blur_sigma=RANGE,
    betag_range=RANGE,
    betap_range=RANGE,
    blur_sigma2=RANGE,
    betag_range2=RANGE,
    betap_range2=RANGE,
    resize_range=RANGE,
    noise_range=RANGE,
    poisson_scale_range=RANGE,
    jpeg_range=RANGE,
    resize_range2=RANGE,
    noise_range2=RANGE,
    poisson_scale_range2=RANGE,
    jpeg_range2=RANGE,
    scale=at_least(1),
    kernel_pad_to=at_least(1),
    usm_weight=at_least(0.0),
    usm_radius=at_least(0),
    usm_threshold=at_least(0.0),
)
@dataclass
class DegradationConfig:
    """Every knob of the two-stage degradation. Ranges are [lo, hi] lists (uniform draws)."""

    name: str = "realesrgan"  # preset name, recorded in params for provenance
    scale: int = 4  # SR factor: LQ is (H/scale, W/scale)

    # --- kernels (sampled on CPU per image by KernelSampler) ---
    kernel_range: list = field(default_factory=lambda: [7, 9, 11, 13, 15, 17, 19, 21])  # hard-coded in the
    # official dataset: its configs' blur_kernel_size keys are ignored, so ours has none
    kernel_pad_to: int = 21  # every kernel is zero-padded (centred) to this size
    kernel_list: list = field(default_factory=lambda: list(KERNEL_FAMILIES))
    kernel_prob: list = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    blur_sigma: list = _pair(0.2, 3.0)  # sigma_x/sigma_y range in pixels, first stage
    betag_range: list = _pair(0.5, 4.0)  # generalized-Gaussian shape beta
    betap_range: list = _pair(1.0, 2.0)  # plateau shape beta
    sinc_prob: float = 0.1  # probability kernel1 is a 2-D sinc instead of a mixed kernel
    kernel_list2: list = field(default_factory=lambda: list(KERNEL_FAMILIES))
    kernel_prob2: list = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    blur_sigma2: list = _pair(0.2, 1.5)
    betag_range2: list = _pair(0.5, 4.0)
    betap_range2: list = _pair(1.0, 2.0)
    sinc_prob2: float = 0.1
    final_sinc_prob: float = 0.8  # else the final "sinc" kernel is an identity pulse

    # --- first stage ---
    resize_prob: list = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: list = _pair(0.15, 1.5)  # up: U(1, hi), down: U(lo, 1)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: list = _pair(1.0, 30.0)  # Gaussian sigma in 8-bit units (divided by 255)
    poisson_scale_range: list = _pair(0.05, 3.0)
    gray_noise_prob: float = 0.4  # noise identical on the three channels
    jpeg_range: list = _pair(30.0, 95.0)  # JPEG quality (float)

    # --- second stage ---
    second_blur_prob: float = 0.8
    resize_prob2: list = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: list = _pair(0.3, 1.2)  # relative to the LQ size H/scale
    gaussian_noise_prob2: float = 0.5
    noise_range2: list = _pair(1.0, 25.0)
    poisson_scale_range2: list = _pair(0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: list = _pair(30.0, 95.0)
    final_order_prob: float = 0.5  # P(resize -> sinc -> JPEG); else JPEG -> resize -> sinc

    resize_modes: list = field(default_factory=lambda: list(RESIZE_MODES))  # drawn uniformly

    # --- GT / output handling ---
    usm_gt: bool = True  # USM-sharpen the GT and degrade the sharpened GT (Real-ESRGAN, SeeSR)
    usm_weight: float = 0.5
    usm_radius: int = 50  # made odd (51); OpenCV sigma 0 -> 8.0
    usm_threshold: float = 10.0  # in 8-bit units
    resize_back: bool = False  # VARSR/OSEDiff: resize LQ back to GT size (random mode), quantise after
    per_batch_compat: bool = False  # reproduce Real-ESRGAN's per-batch draws (+ shared gray noise field)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DegradationConfig:
        """Build from a (Hydra/OmegaConf or plain) mapping; unknown keys raise one clear error."""
        if not isinstance(d, dict):
            try:
                from omegaconf import OmegaConf

                d = OmegaConf.to_container(d, resolve=True)
            except Exception:  # noqa: BLE001 - plain Mapping
                d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown degradation config keys: {unknown}")
        cfg = cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        for key in ("kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"):
            probs = getattr(self, key)
            if abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0:
                raise ValueError(f"degradation.{key} must be non-negative and sum to 1, got {probs}")
        for fam in list(self.kernel_list) + list(self.kernel_list2):
            if fam not in KERNEL_FAMILIES:
                raise ValueError(f"unknown kernel family {fam!r}; expected one of {KERNEL_FAMILIES}")
        for mode in self.resize_modes:
            if mode not in RESIZE_MODES:
                raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
        if self.kernel_pad_to % 2 == 0 or any(k % 2 == 0 or k > self.kernel_pad_to for k in self.kernel_range):
            raise ValueError("kernel sizes must be odd and <= kernel_pad_to (odd)")
        if self.scale < 1:
            raise ValueError(f"degradation.scale must be >= 1, got {self.scale}")


def _realesrgan() -> DegradationConfig:
    return DegradationConfig()


def _varsr_mild() -> DegradationConfig:
    # VARSR dataloader/params_realesrgan.yml (byte-identical to SeeSR's unused class).
    return DegradationConfig(
        name="varsr_mild",
        resize_range=[0.3, 1.5],
        noise_range=[1.0, 15.0],
        poisson_scale_range=[0.05, 2.0],
        jpeg_range=[60.0, 95.0],
        second_blur_prob=0.5,
        resize_range2=[0.6, 1.2],
        noise_range2=[1.0, 12.0],
        poisson_scale_range2=[0.05, 1.0],
        jpeg_range2=[60.0, 100.0],
        usm_gt=False,
        resize_back=True,
    )


PRESETS = {"realesrgan": _realesrgan, "varsr_mild": _varsr_mild}


def get_preset(name: str, **overrides: Any) -> DegradationConfig:
    """Return a fresh preset config (``realesrgan`` or ``varsr_mild``), optionally overriding keys."""
    if name not in PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = dataclasses.replace(PRESETS[name](), **overrides)
    cfg.validate()
    return cfg
