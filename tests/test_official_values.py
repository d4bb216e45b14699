"""Every preset number pinned to the official recipes, written out here as literals.

The values come from the official option files and scripts (Real-ESRGAN's
`train_realesrgan_x4plus.yml`, VARSR's `dataloader/params_realesrgan.yml`, `train.py` arguments
and `test_varsr.py`, PURE's `scripts/train.sh` and README sampling), as recorded in
shared/specs (common.md §1.6, varsr.md §6-§8, pure.md §5-§7). The table is deliberately
independent of the code and of the YAML: a number changed in the dataclass and the YAML together
still fails here. What ships is checked through the config a user composes (and, for the
degradation, the dataclass preset too).
"""

import math

import pytest

from common.config import compose_config, to_dataclass


def _differences(got: dict, want: dict) -> dict:
    """Keys whose values differ (numbers to 1e-9 relative, lists element-wise, the rest exactly)."""

    def same(a, b):
        if isinstance(b, (list, tuple)):
            return isinstance(a, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-9)
        return type(a) is type(b) and a == b

    return {k: (got.get(k), v) for k, v in want.items() if not same(got.get(k), v)}


# --- Real-ESRGAN second-order degradation (common.md §1.6) ---------------------------------------
_KERNELS = {
    "kernel_range": [7, 9, 11, 13, 15, 17, 19, 21],
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "kernel_list2": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "blur_sigma": [0.2, 3.0],
    "blur_sigma2": [0.2, 1.5],
    "betag_range": [0.5, 4.0],
    "betag_range2": [0.5, 4.0],
    "betap_range": [1.0, 2.0],
    "betap_range2": [1.0, 2.0],
    "sinc_prob": 0.1,
    "sinc_prob2": 0.1,
    "final_sinc_prob": 0.8,
    "resize_prob": [0.2, 0.7, 0.1],
    "resize_prob2": [0.3, 0.4, 0.3],
    "gaussian_noise_prob": 0.5,
    "gaussian_noise_prob2": 0.5,
    "gray_noise_prob": 0.4,
    "gray_noise_prob2": 0.4,
    "final_order_prob": 0.5,
    "scale": 4,
}
OFFICIAL_DEGRADATION = {
    "realesrgan": {
        **_KERNELS,
        "resize_range": [0.15, 1.5],
        "noise_range": [1.0, 30.0],
        "poisson_scale_range": [0.05, 3.0],
        "jpeg_range": [30.0, 95.0],
        "second_blur_prob": 0.8,
        "resize_range2": [0.3, 1.2],
        "noise_range2": [1.0, 25.0],
        "poisson_scale_range2": [0.05, 2.5],
        "jpeg_range2": [30.0, 95.0],
        "usm_gt": True,
        "usm_weight": 0.5,
        "usm_radius": 50,
        "usm_threshold": 10.0,
        "resize_back": False,
    },
    "varsr_mild": {
        **_KERNELS,
        "resize_range": [0.3, 1.5],
        "noise_range": [1.0, 15.0],
        "poisson_scale_range": [0.05, 2.0],
        "jpeg_range": [60.0, 95.0],
        "second_blur_prob": 0.5,
        "resize_range2": [0.6, 1.2],
        "noise_range2": [1.0, 12.0],
        "poisson_scale_range2": [0.05, 1.0],
        "jpeg_range2": [60.0, 100.0],
        "usm_gt": False,
        "resize_back": True,
    },
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_DEGRADATION))
def test_degradation_presets_are_the_official_numbers(name):
    from common.degradation import DegradationConfig, get_preset

    composed = to_dataclass(
        DegradationConfig,
        compose_config("common", "degrade", [f"degradation={name}", "hr_dir=/a", "out_dir=/b"]).degradation,
    )
    for source, cfg in (("configs/common/degradation", composed), ("get_preset", get_preset(name))):
        got = {k: getattr(cfg, k) for k in OFFICIAL_DEGRADATION[name]}
        assert not _differences(got, OFFICIAL_DEGRADATION[name]), (
            source,
            _differences(got, OFFICIAL_DEGRADATION[name]),
        )


# --- VARSR: train.py arguments, arg_util.py, test_varsr.py (varsr.md) ---------------------------
OFFICIAL_VARSR_TRAIN = {
    "optim.lr": 5e-5,  # --tblr
    "optim.betas": [0.9, 0.95],
    "optim.weight_decay": 0.05,
    "optim.grad_clip": 2.0,
    "schedule.epochs": 5,
    "schedule.warmup_epochs": 0.1,  # ep / 50
    "schedule.warmup_start": 0.005,  # wp0
    "schedule.flat_fraction": 0.3,
    "schedule.end_ratio": 0.01,  # --wpe: final lr ratio of lin0
    "data.batch_size": 4,  # per GPU
    "data.crop_size": 512,
    "data.resize_shorter_to": 640,  # round(1.25 * 512)
    "precision.dtype": "fp16",  # --fp16=1
    "precision.init_scale": 2.0**11,
    "precision.growth_interval": 1000,
    "precision.max_scale": 2.0**15,
}
OFFICIAL_VARSR_SAMPLE = {"cfg": 6.0, "top_k": 1, "tile_cfg": 7.0, "refiner_temperature": 1.0}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, (list, tuple)) or type(cfg).__name__ == "ListConfig" else cfg


@pytest.mark.parametrize("exp", [None, "lsdir_ffhq"])
def test_varsr_training_recipe_is_official(exp):
    from varsr.config import VARSRTrainConfig, register_configs

    register_configs()
    cfg = to_dataclass(VARSRTrainConfig, compose_config("varsr", "train", [f"+exp={exp}"] if exp else []))
    assert not _differences({k: _get(cfg, k) for k in OFFICIAL_VARSR_TRAIN}, OFFICIAL_VARSR_TRAIN)


def test_varsr_sampling_defaults_are_official():
    from varsr.evaluate import SampleRunConfig, register_configs

    register_configs()
    cfg = to_dataclass(SampleRunConfig, compose_config("varsr", "sample", ["lr_dir=/x"]))
    assert not _differences({k: _get(cfg, k) for k in OFFICIAL_VARSR_SAMPLE}, OFFICIAL_VARSR_SAMPLE)


# --- PURE: scripts/train.sh and README sampling (pure.md §5-§7) ---------------------------------
OFFICIAL_PURE_TRAIN = {
    "optim.lr": 4e-4,
    "optim.betas": [0.9, 0.95],
    "optim.eps": 1e-8,
    "optim.weight_decay": 0.1,
    "optim.grad_clip": 4.0,
    "schedule.epochs": 2.0,
    "schedule.warmup_epochs": 0.5,
    "schedule.min_lr": 0.0,
    "loss.z_loss_weight": 0.0,
    "dropout": 0.05,
}
OFFICIAL_PURE_SAMPLE = {"cfg": 0.8, "temperature": 0.9, "top_k": 1, "entropy_top_k": True}


@pytest.mark.parametrize("exp", [None, "lsdir_ffhq"])
def test_pure_training_recipe_is_official(exp):
    from pure.config import PureTrainConfig, register_configs

    register_configs()
    cfg = to_dataclass(PureTrainConfig, compose_config("pure", "train", [f"+exp={exp}"] if exp else []))
    assert not _differences({k: _get(cfg, k) for k in OFFICIAL_PURE_TRAIN}, OFFICIAL_PURE_TRAIN)
    if exp:
        assert cfg.data.batch_size == 4  # per GPU; 4 nodes x 8 GPUs x 4 = 128


def test_pure_sampling_defaults_are_official():
    from pure.evaluate import PureSampleConfig, register_configs

    register_configs()
    cfg = to_dataclass(PureSampleConfig, compose_config("pure", "sample", ["lr_dir=/x"]))
    assert not _differences({k: _get(cfg, k) for k in OFFICIAL_PURE_SAMPLE}, OFFICIAL_PURE_SAMPLE)
