"""Seams of the shared library: which file, sample or rank a value lands on.

Each test makes its inputs distinguishable and derives the expected value independently (a closed
form, or the input's own content), never from the configuration under test. Bug each one catches
(each was planted by hand once and made the test fail):

- test_evaluate_pairs_sr_with_hr_of_the_same_name: SR "a" scored against HR "b" (e.g. pairing by
  sorted position instead of by name, with an extra HR file shifting the order) -> per-image PSNR rows
  swap or land on the wrong name.

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
