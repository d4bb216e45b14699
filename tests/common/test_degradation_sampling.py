"""Sampled kernel families / random choices follow the preset probabilities (spec common.md §1.2-1.3)."""

import collections
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.degradation import DegradationConfig, Degrader, KernelSampler, collate_kernels, get_preset

N = 2000


def _tol(p, n=N):  # 4.5 binomial standard deviations
    return 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9


@pytest.fixture(scope="module")
def draws():
    cfg = get_preset("realesrgan")
    s = KernelSampler(cfg)
    rng = np.random.default_rng(0)
    return cfg, [s(rng) for _ in range(N)]


def test_kernel_family_frequencies(draws):
    cfg, ds = draws
    for key, sinc_p in (("kernel1", cfg.sinc_prob), ("kernel2", cfg.sinc_prob2)):
        fams = collections.Counter(d["params"][key]["family"] for d in ds)
        assert abs(fams["sinc"] / N - sinc_p) < _tol(sinc_p)
        n_mixed = N - fams["sinc"]
        for fam, p in zip(cfg.kernel_list, cfg.kernel_prob):
            assert abs(fams[fam] / n_mixed - p) < _tol(p, n_mixed), (key, fam)
    final = collections.Counter(d["params"]["sinc"]["family"] for d in ds)
    assert abs(final["sinc"] / N - cfg.final_sinc_prob) < _tol(cfg.final_sinc_prob)


def test_kernel_shapes_sizes_and_ranges(draws):
    cfg, ds = draws
    sizes = collections.Counter(d["params"]["kernel1"]["size"] for d in ds)
    assert set(sizes) == set(cfg.kernel_range)
    for d in ds[:300]:
        for k in ("kernel1", "kernel2", "sinc_kernel"):
            assert d[k].shape == (21, 21) and d[k].dtype == torch.float32
            assert abs(float(d[k].sum()) - 1) < 1e-5
        p1 = d["params"]["kernel1"]
        ks = p1["size"]
        if ks < 21:  # zero padding outside the ks x ks centre
            m = (21 - ks) // 2
            assert float(d["kernel1"][:m].abs().sum()) == 0 and float(d["kernel1"][:, -m:].abs().sum()) == 0
        if p1["family"] == "sinc":
            lo = math.pi / 3 if ks < 13 else math.pi / 5
            assert lo <= p1["omega_c"] <= math.pi
        else:
            assert 0.2 <= p1["sigma_x"] <= 3.0 and 0.2 <= p1["sigma_y"] <= 3.0
            if "aniso" not in p1["family"]:
                assert p1["sigma_x"] == p1["sigma_y"] and p1["theta"] == 0.0
        if d["params"]["sinc"]["family"] == "identity":
            assert float(d["sinc_kernel"][10, 10]) == 1.0
        p2 = d["params"]["kernel2"]
        if p2["family"] != "sinc":
            assert p2["sigma_x"] <= 1.5

    def betas(fams):
        return np.array([d["params"]["kernel1"]["beta"] for d in ds if d["params"]["kernel1"]["family"] in fams])

    gen = betas(("generalized_iso", "generalized_aniso"))
    assert 0.35 < np.mean(gen < 1) < 0.65 and gen.min() >= 0.5 and gen.max() <= 4  # half below 1
    plat = betas(("plateau_iso", "plateau_aniso"))
    assert 0.35 < np.mean(plat == 1.0) < 0.65 and plat.max() <= 2  # beta_p lo = 1: half exactly 1


def test_sampler_reproducible_and_collates():
    s = KernelSampler(get_preset("varsr_mild"))
    a = [s(np.random.default_rng(5)) for _ in range(2)]
    assert torch.equal(a[0]["kernel1"], a[1]["kernel1"]) and a[0]["params"] == a[1]["params"]
    c = collate_kernels([s(np.random.default_rng(i)) for i in range(3)])
    assert c["kernel1"].shape == (3, 21, 21) and len(c["params"]) == 3


def test_random_choice_frequencies():
    cfg = get_preset("realesrgan")
    ps = Degrader(cfg).sample_params(N, torch.Generator().manual_seed(0))
    for st, probs, gp, gray in (
        ("stage1", cfg.resize_prob, cfg.gaussian_noise_prob, cfg.gray_noise_prob),
        ("stage2", cfg.resize_prob2, cfg.gaussian_noise_prob2, cfg.gray_noise_prob2),
    ):
        kinds = collections.Counter(p[st]["resize"] for p in ps)
        for kind, pr in zip(("up", "down", "keep"), probs):
            assert abs(kinds[kind] / N - pr) < _tol(pr), (st, kind)
        assert abs(np.mean([p[st]["noise"] == "gaussian" for p in ps]) - gp) < _tol(gp)
        assert abs(np.mean([p[st]["gray_noise"] for p in ps]) - gray) < _tol(gray)
        modes = collections.Counter(p[st]["resize_mode"] for p in ps)
        assert set(modes) == {"area", "bilinear", "bicubic"} and min(modes.values()) > N / 3 - 4.5 * 21
    assert abs(np.mean([p["stage2"]["blur"] for p in ps]) - 0.8) < _tol(0.8)
    assert abs(np.mean([p["final"]["order"] == "resize_sinc_jpeg" for p in ps]) - 0.5) < _tol(0.5)
    lo, hi = cfg.resize_range
    for p in ps:
        s1 = p["stage1"]
        assert {
            "up": 1 <= s1["resize_scale"] <= hi,
            "down": lo <= s1["resize_scale"] <= 1,
            "keep": s1["resize_scale"] == 1,
        }[s1["resize"]]
        assert 30 <= s1["jpeg_quality"] <= 95 and 30 <= p["final"]["jpeg_quality"] <= 95
        if s1["noise"] == "gaussian":
            assert 1 <= s1["noise_sigma"] <= 30 and s1["poisson_scale"] is None
        else:
            assert 0.05 <= s1["poisson_scale"] <= 3


def test_per_batch_compat_shares_batch_level_choices_only():
    cfg = get_preset("realesrgan", per_batch_compat=True)
    ps = Degrader(cfg).sample_params(16, torch.Generator().manual_seed(3))
    for key in ("resize", "resize_scale", "resize_mode", "noise"):
        assert len({str(p["stage1"][key]) for p in ps}) == 1 and len({str(p["stage2"][key]) for p in ps}) == 1
    assert len({p["final"]["order"] for p in ps}) == 1 and len({p["stage2"]["blur"] for p in ps}) == 1
    assert len({p["stage1"]["jpeg_quality"] for p in ps}) == 16  # per sample, as official
    per_sample = get_preset("realesrgan")
    qs = Degrader(per_sample).sample_params(16, torch.Generator().manual_seed(3))
    assert len({p["stage1"]["resize_scale"] for p in qs}) > 1


@pytest.mark.parametrize("name", ["realesrgan", "varsr_mild"])
def test_yaml_mirrors_preset(name):
    path = Path(__file__).resolve().parents[2] / "configs/common/degradation" / f"{name}.yaml"
    assert DegradationConfig.from_dict(yaml.safe_load(path.read_text())) == get_preset(name)


def test_presets_match_spec_table_differences():
    a, b = get_preset("realesrgan"), get_preset("varsr_mild")
    assert (a.usm_gt, a.resize_back, b.usm_gt, b.resize_back) == (True, False, False, True)
    assert b.jpeg_range2 == [60.0, 100.0] and b.noise_range2 == [1.0, 12.0] and a.poisson_scale_range == [0.05, 3.0]
    with pytest.raises(ValueError, match="unknown degradation config keys"):
        DegradationConfig.from_dict({"blur_kernel_size": 21})
    with pytest.raises(ValueError, match="unknown degradation preset"):
        get_preset("nope")
