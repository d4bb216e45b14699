"""Metrics and summaries through the public entry points (issue 15): `crop_border` really crops
(launch/evaluate.py and evaluate_folders; PSNR against the closed form written here), NaN points
are never a sweep's best, and best-of follows each metric's direction (PSNR/SSIM higher,
LPIPS/DISTS/NIQE lower) even when the jobs do not say which is which."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.metrics import evaluate_folders
from common.sweep import SweepSummary

ROOT = Path(__file__).resolve().parents[2]
H, W, RING = 24, 28, 2  # images; the SR differs from the HR only on a RING-px frame


def _pair(root: Path) -> tuple[Path, Path]:
    hr = np.full((H, W, 3), 100, np.uint8)
    sr = hr.copy()
    sr[:RING], sr[-RING:], sr[:, :RING], sr[:, -RING:] = 110, 110, 110, 110
    for sub, img in (("HR", hr), ("SR", sr)):
        (root / sub).mkdir(parents=True)
        Image.fromarray(img).save(root / sub / "a.png")
    return root / "SR", root / "HR"


def _closed_form_psnr(crop: int) -> float:
    """Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 on [0, 1] RGB: a grey step of 10/255 moves Y
    by 219 * 10 / 255^2; MSE = step^2 x (frame pixels left after the crop) / (pixels left)."""
    step = 219.0 * 10 / 255**2
    h, w = H - 2 * crop, W - 2 * crop
    ring = max(RING - crop, 0)
    frame = h * w - max(h - 2 * ring, 0) * max(w - 2 * ring, 0)
    return math.inf if frame == 0 else 10 * math.log10(1 / (step**2 * frame / (h * w)))


@pytest.mark.parametrize("crop", [0, 1, 2, 3])
def test_crop_border_through_evaluate_folders(tmp_path, crop):
    sr, hr = _pair(tmp_path)
    s = evaluate_folders(sr, hr, ["psnr", "ssim"], tmp_path / "o" / "r.json", crop_border=crop, show_progress=False)
    want = _closed_form_psnr(crop)
    if math.isinf(want):
        assert s["mean"]["psnr"] == math.inf and s["mean"]["ssim"] == pytest.approx(1.0, abs=1e-12)
    else:
        assert s["mean"]["psnr"] == pytest.approx(want, abs=1e-9) and s["mean"]["ssim"] < 1
    assert s["crop_border"] == crop


def test_crop_border_through_the_launcher(tmp_path):
    """launch/evaluate.py passes crop_border on: identical interiors score inf, no crop is finite."""
    spec = importlib.util.spec_from_file_location("launch_evaluate_h15", ROOT / "launch" / "evaluate.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    sr, hr = _pair(tmp_path)
    common = [f"sr_dir={sr}", f"hr_dir={hr}", "metrics=[psnr]", "device=cpu", "progress=false"]
    for crop, want in ((2, math.inf), (0, _closed_form_psnr(0))):
        out = tmp_path / f"crop{crop}.json"
        launcher.main([*common, f"out={out}", f"crop_border={crop}"])
        got = json.loads(out.read_text())["mean"]["psnr"]
        assert got == want if math.isinf(want) else got == pytest.approx(want, abs=1e-9)


def _sweep(tmp_path, table: dict[str, dict[str, float]]) -> list[dict]:
    """Run the SweepSummary callback as Hydra does; jobs return flat metric dicts (no direction)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    def conf(out, num):
        hydra = {"mode": "RunMode.MULTIRUN", "runtime": {"output_dir": str(out)}, "job": {"num": num}}
        return OmegaConf.create({"hydra": {**hydra, "sweep": {"dir": str(tmp_path)}}})

    cb = SweepSummary(figure=False)
    cb.on_multirun_start(conf(tmp_path, 0))
    for num, (cfg, metrics) in enumerate(table.items()):
        ret = JobReturn()
        ret.status, ret.overrides, ret.return_value = JobStatus.COMPLETED, [f"cfg={cfg}"], dict(metrics)
        cb.on_job_end(conf(tmp_path / f"cfg={cfg}", num), ret)
    cb.on_multirun_end(conf(tmp_path, 0))
    with open(tmp_path / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_best_of_direction_and_nan_points(tmp_path):
    nan = float("nan")
    table = {  # the best of each column, by hand: psnr 3 (nan at 4 is not best), ssim 2, lpips 1,
        # dists 3, niqe 2 (nan at 1 is not best)
        "1": {"psnr": 20.0, "ssim": 0.50, "lpips": 0.10, "dists": 0.30, "niqe": nan},
        "2": {"psnr": 21.0, "ssim": 0.70, "lpips": 0.30, "dists": 0.20, "niqe": 3.0},
        "3": {"psnr": 25.0, "ssim": 0.60, "lpips": 0.20, "dists": 0.10, "niqe": 5.0},
        "4": {"psnr": nan, "ssim": 0.40, "lpips": 0.40, "dists": 0.40, "niqe": 9.0},
    }
    rows = _sweep(tmp_path, table)
    assert [(r["cfg"], set(filter(None, r["best"].split(";")))) for r in rows] == [
        ("1", {"lpips"}),
        ("2", {"ssim", "niqe"}),
        ("3", {"psnr", "dists"}),
        ("4", set()),
    ]
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "| 3 | completed | **25.0000** | 0.6000 | 0.2000 | **0.1000** | 5.0000 |" in md
    assert "| 4 | completed | nan | 0.4000 | 0.4000 | 0.4000 | 9.0000 |" in md
    assert "lpips lower is better" in md and "dists lower is better" in md and "ssim higher is better" in md


def test_sweep_all_nan_metric_has_no_best(tmp_path):
    rows = _sweep(tmp_path, {"1": {"psnr": float("nan"), "niqe": 4.0}, "2": {"psnr": float("nan"), "niqe": 3.0}})
    assert [r["best"] for r in rows] == ["", "niqe"]
