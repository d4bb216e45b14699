"""common.degradation.folder / launch/degrade.py end to end on small synthetic images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.io import read_image
from common.degradation import get_preset
from common.degradation.folder import DegradeConfig, degrade_folder

ROOT = Path(__file__).resolve().parents[2]


def _make_hr(d: Path) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (101, 90), "b.jpg": (96, 96), "c.png": (96, 96), "sub/d.png": (130, 97)}.items():
        (d / name).parent.mkdir(exist_ok=True)
        base = rng.random((h // 4 + 1, w // 4 + 1, 3))
        img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
        Image.fromarray((img * 255).astype(np.uint8)).save(d / name)
    (d / "broken.png").write_bytes(b"not a png")
    (d / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "tiny.png")
    return d


def test_degrade_folder_whole_images(tmp_path):
    hr = _make_hr(tmp_path / "hr")
    out = tmp_path / "out"
    counts = degrade_folder(
        DegradeConfig(hr_dir=str(hr), out_dir=str(out), degradation=get_preset("varsr_mild"), seed=0, progress=False)
    )
    assert {k: counts[k] for k in ("written", "bad", "too_small", "existing", "skipped")} == {
        "written": 4,
        "bad": 2,
        "too_small": 1,
        "existing": 0,
        "skipped": 2,
    }
    assert [Path(p).name for p in counts["skipped_files"]] == ["broken.png", "empty.jpg"]
    names = sorted(p.name for p in (out / "HR").iterdir())
    assert names == ["a.png", "b.png", "c.png", "d.png"] == sorted(p.name for p in (out / "LR").iterdir())
    for n in names:
        h, l = read_image(out / "HR" / n), read_image(out / "LR" / n)
        assert h.shape[0] % 4 == 0 and h.shape[1] % 4 == 0
        assert (l.shape[0] * 4, l.shape[1] * 4) == h.shape[:2]
    a = read_image(out / "HR" / "a.png")
    assert a.shape[:2] == (100, 88)  # trimmed bottom/right to a multiple of 4
    np.testing.assert_array_equal(a, read_image(hr / "a.png")[:100, :88])  # varsr_mild: no USM on HR
    recs = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert [r["name"] for r in recs] == ["a.png", "b.png", "c.png", "d.png"]
    assert all(r["preset"] == "varsr_mild" and "stage1" in r and "kernel1" in r for r in recs)


def test_degrade_folder_crops_and_is_reproducible(tmp_path):
    hr = _make_hr(tmp_path / "hr")
    cfg = dict(hr_dir=str(hr), degradation=get_preset("realesrgan"), seed=3, crop=64, batch_size=2, progress=False)
    degrade_folder(DegradeConfig(out_dir=str(tmp_path / "o1"), **cfg))
    degrade_folder(DegradeConfig(out_dir=str(tmp_path / "o2"), **{**cfg, "batch_size": 1}))
    for n in ("a.png", "b.png", "c.png", "d.png"):
        l1, l2 = read_image(tmp_path / "o1/LR" / n), read_image(tmp_path / "o2/LR" / n)
        assert read_image(tmp_path / "o1/HR" / n).shape == (64, 64, 3) and l1.shape == (16, 16, 3)
        # each image's pair depends on (seed, index) only, not on the batching
        assert np.abs(l1.astype(int) - l2.astype(int)).max() <= 1
    r1 = (tmp_path / "o1/params.jsonl").read_text().splitlines()
    assert [json.loads(x)["crop"] for x in r1] == [
        json.loads(x)["crop"] for x in (tmp_path / "o2/params.jsonl").read_text().splitlines()
    ]


def test_degrade_folder_bad_input_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        degrade_folder(DegradeConfig(hr_dir=str(tmp_path / "nope"), out_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade_folder(DegradeConfig(hr_dir=str(tmp_path), out_dir=str(tmp_path / "o"), crop=66))


@pytest.mark.slow  # two Python start-ups with Hydra: ~20 s on a loaded 2-core machine
def test_launch_degrade_with_hydra_overrides(tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray((rng.random((72, 80, 3)) * 255).astype(np.uint8)).save(hr / f"im{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "ARSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch/degrade.py"),
            f"hr_dir={hr}",
            f"out_dir={out}",
            "degradation=varsr_mild",
            "seed=0",
            "degradation.scale=2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_image(out / "LR" / "im0.png").shape == (36, 40, 3)
    recs = [json.loads(x) for x in (out / "params.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and recs[0]["scale"] == 2 and recs[0]["preset"] == "varsr_mild"
    bad = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch/degrade.py"),
            f"hr_dir={tmp_path / 'missing'}",
            f"out_dir={tmp_path / 'o2'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "hr_dir=" in bad.stderr and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
