"""Seams of the shared library: which file, sample or rank a value lands on.

Each test makes its inputs distinguishable and derives the expected value independently (a closed
form, or the input's own content), never from the configuration under test. Bug each one catches
(each was planted by hand once and made the test fail):

- test_evaluate_pairs_sr_with_hr_of_the_same_name: SR "a" scored against HR "b" (e.g. pairing by
  sorted position instead of by name, with an extra HR file shifting the order) -> per-image PSNR rows
  swap or land on the wrong name.
- test_degrade_folder_writes_each_pair_under_its_own_name: within a batch of equal-size images, LR i
  written under the name of image j, or a params.jsonl line attached to another pair.

The batched degradation's row routing is pinned by tests/common/test_degradation_pipeline.py
(test_batched_equals_each_sample_alone: every row equals that sample degraded alone).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np

from common.data.io import write_image


def _flat(value: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_evaluate_pairs_sr_with_hr_of_the_same_name(tmp_path):
    from common.metrics import evaluate_folders

    sr, hr = tmp_path / "sr", tmp_path / "hr"
    # Gray offsets d (8-bit levels) per name; Y-PSNR of a uniform gray offset d is closed form:
    # Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255 -> dY = d * 219 / 255 / 255.
    offsets = {"a": 2, "b": 10, "c": 30}
    for name, d in offsets.items():
        write_image(hr / f"{name}.png", _flat(100))
        write_image(sr / f"{name}.png", _flat(100 + d))
    write_image(hr / "0_extra.png", _flat(0))  # sorts first: positional pairing would shift every row
    out = tmp_path / "res" / "m.json"
    evaluate_folders(sr, hr, ["psnr"], out, allow_extra_hr=True, show_progress=False)
    rows = {r["name"]: float(r["psnr"]) for r in csv.DictReader(open(out.with_name("m_per_image.csv")))}
    for name, d in offsets.items():
        dy = d * 219 / 255 / 255
        assert math.isclose(rows[name], 10 * math.log10(1 / dy**2), rel_tol=1e-6), (name, rows)
    summary = json.loads(out.read_text())
    expected_mean = sum(10 * math.log10(1 / (d * 219 / 255 / 255) ** 2) for d in offsets.values()) / 3
    assert math.isclose(float(summary.get("mean", summary)["psnr"]), expected_mean, rel_tol=1e-6), summary


def test_degrade_folder_writes_each_pair_under_its_own_name(tmp_path):
    """Images of two sizes degraded in batches: HR/<name> and LR/<name> must come from input <name>
    (catches a batch flushed in grouping order, or params.jsonl lines attached to the wrong pair)."""
    from common.config import to_dataclass
    from common.data.io import read_image
    from common.degradation.folder import DegradeConfig, degrade_folder
    from common.degradation.presets import get_preset

    hr = tmp_path / "in"
    levels = {"a": 50, "b": 200, "c": 150, "d": 100}
    rng = np.random.default_rng(0)
    for i, (name, v) in enumerate(levels.items()):
        size = (64, 96) if i < 2 else (64, 64)  # consecutive equal sizes are batched together
        # Textured, not flat: Real-ESRGAN's Poisson noise scales with the number of distinct values,
        # and on a one-valued image it is strong enough to move the mean by tens of levels.
        write_image(hr / f"{name}.png", (v + rng.integers(-40, 41, (*size, 3))).astype(np.uint8))
    cfg = to_dataclass(
        DegradeConfig,
        {
            "hr_dir": str(hr),
            "out_dir": str(tmp_path / "out"),
            "batch_size": 4,
            "device": "cpu",
            "progress": False,
            "degradation": vars(get_preset("varsr_mild")),
        },
    )
    degrade_folder(cfg)
    out = tmp_path / "out"
    for name, v in levels.items():
        lr, hr_out = read_image(out / "LR" / f"{name}.png"), read_image(out / "HR" / f"{name}.png")
        assert abs(float(hr_out.mean()) - v) < 3, name  # the (unsharpened) HR keeps its level
        # blur/noise/JPEG keep a flat image's mean level roughly: nearest to its own input level
        assert min(levels, key=lambda n: abs(levels[n] - float(lr.mean()))) == name, (name, lr.mean())
        assert lr.shape[1] * 4 == hr_out.shape[1] and lr.shape[0] * 4 == hr_out.shape[0]
    records = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert {r["name"]: r["source"] for r in records} == {f"{n}.png": f"{n}.png" for n in levels}
