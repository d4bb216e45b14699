"""launch/sample_baseline.py (bicubic | Real-ESRGAN over a folder) follows the folder tools' rules, gives a
sweep one row per baseline, and the web demo serves Real-ESRGAN as its third model. Reduced-size RRDBNet
weights (a .safetensors in the official layout) stand in for x4plus: the code path is the shipped one."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.baseline.tiled import upscale
from common.baseline.weights import Arch, build_rrdbnet
from common.checkpoint import save_safetensors_atomic
from common.data.io import read_image, write_image
from common.paths import EXIT_SKIPPED, exit_code
from launch.sample_baseline import main
from tests.common.realesrgan_fixtures import random_state_dict, smooth_image

ROOT = Path(__file__).resolve().parents[2]
SMALL = Arch(num_feat=8, num_block=1, num_grow_ch=4)


@pytest.fixture
def weights(tmp_path):
    sd = random_state_dict(SMALL, seed=3)
    sd["conv_last.bias"].fill_(0.5)  # outputs mid-grey plus detail: the 8-bit comparison below is meaningful
    return save_safetensors_atomic(sd, tmp_path / "small_x4.safetensors"), sd


def _folder(root: Path) -> Path:
    lr = root / "LR"
    lr.mkdir(parents=True)
    write_image(lr / "a.png", smooth_image(12, 9, seed=1))
    write_image(lr / "b.png", smooth_image(7, 10, seed=2))
    (lr / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return lr


def test_folder_rules_and_outputs_equal_the_model(tmp_path, weights, one_thread):
    path, sd = weights
    lr = _folder(tmp_path)
    out = tmp_path / "out"
    args = [f"lr_dir={lr}", f"out_dir={out}", f"weights={path}", "tile=4", "tile_pad=3", "metrics=[]", "progress=false"]
    res = main(args)
    assert exit_code(res) == EXIT_SKIPPED and (res["images"], res["skipped"]) == (2, 1)
    model = build_rrdbnet(SMALL)
    model.load_state_dict(sd)  # an independent load of the same weights
    for name in ("a", "b"):
        img = read_image(lr / f"{name}.png")
        want = upscale(model.eval(), img, tile=0, show_progress=False)[0]  # one shot, float
        got = torch.from_numpy(read_image(out / f"{name}.png")).permute(2, 0, 1).float() / 255
        assert got.shape == (3, 4 * img.shape[0], 4 * img.shape[1])
        assert (got - want).abs().max() <= 0.5 / 255 + 1e-3  # 8-bit rounding (+ tiny seam effect of a 1-block net)
    stamp = (out / "a.png").stat().st_mtime_ns
    assert main(args)["images"] == 2 and (out / "a.png").stat().st_mtime_ns == stamp  # resume keeps outputs
    for bad in ([f"out_dir={lr / 'sr'}"], [f"out_dir={out}", "skip_existing=false"], ["tile=-1", f"out_dir={out}"]):
        with pytest.raises(SystemExit) as e:  # inside the input / existing outputs / a bad value: one line, 2
            main([*args, *bad])
        assert e.value.code == 2


def test_bicubic_is_pil_bicubic_at_any_scale(tmp_path):
    lr = _folder(tmp_path)
    res = main([f"lr_dir={lr}", f"out_dir={tmp_path / 'bic'}", "method=bicubic", "scale=3", "metrics=[]"])
    assert res["images"] == 2
    for name in ("a", "b"):
        im = Image.open(lr / f"{name}.png").convert("RGB")
        want = np.asarray(im.resize((3 * im.width, 3 * im.height), Image.BICUBIC))
        assert np.array_equal(read_image(tmp_path / "bic" / f"{name}.png"), want)


@pytest.mark.slow
def test_sweep_gives_a_row_per_baseline(tmp_path, weights):
    from common.data.bundled import bundled_pairs

    for sub in ("LR", "HR"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for name, lr, hr in bundled_pairs(size=64)[:2]:
        write_image(tmp_path / "set" / "LR" / f"{name}.png", lr)
        write_image(tmp_path / "set" / "HR" / f"{name}.png", hr)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "launch" / "sample_baseline.py"), "-m", "method=bicubic,realesrgan"]
    cmd += [f"lr_dir={tmp_path / 'set/LR'}", f"hr_dir={tmp_path / 'set/HR'}", f"weights={weights[0]}"]
    cmd += [f"hydra.sweep.dir={sweep}", "device=cpu", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(sweep / "sweep_summary.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"bicubic", "realesrgan"} and all(r["status"] == "completed" for r in rows.values())
    assert rows["bicubic"]["psnr"] != rows["realesrgan"]["psnr"]  # each row scored its own outputs


def test_web_demo_serves_realesrgan_as_a_third_model(tmp_path, weights, one_thread):
    from webdemo.config import WebDemoConfig
    from webdemo.host import APPS, DemoError, ModelHost, Request

    assert "realesrgan" in APPS and WebDemoConfig().realesrgan == {"x4plus": {"weights": None}}
    assert ModelHost.from_config(WebDemoConfig()).choices("realesrgan") == ["x4plus"]  # what launch/web_demo serves
    host = ModelHost({"realesrgan": {"small": {"weights": str(weights[0]), "tile": 4}}}, device="cpu")
    img = smooth_image(9, 14)
    tiled = host.run(Request("realesrgan", "small", 0.0, 1.0, tile="auto"), img)
    whole = host.run(Request("realesrgan", "small", 0.0, 1.0, tile="off"), img)
    assert tiled.image.shape == whole.image.shape == (36, 56, 3)
    assert tiled.info["tile"] == 4 and whole.info["tile"] == 0
    host = ModelHost({"realesrgan": {"gone": {"weights": str(tmp_path / "nope.pth")}}}, device="cpu")
    with pytest.raises(DemoError, match="not on disk"):
        host.run(Request("realesrgan", "gone", 0.0, 1.0), img)


def test_scored_run_writes_nothing_beside_out_dir_and_gates_inputs(tmp_path):
    """Issue 16 bad case 3 for the baseline tool too: metrics land inside out_dir, a sibling run's
    files are untouched; an input declaring more pixels than max_input_pixels is skipped undecoded."""
    lr = _folder(tmp_path)
    hr = tmp_path / "hr"
    hr.mkdir()
    for name in ("a", "b"):
        im = Image.open(lr / f"{name}.png").convert("RGB")
        im.resize((2 * im.width, 2 * im.height), Image.BICUBIC).save(hr / f"{name}.png")
    (tmp_path / "metrics.json").write_text("sibling run")
    out = tmp_path / "bic"
    res = main([f"lr_dir={lr}", f"hr_dir={hr}", f"out_dir={out}", "method=bicubic", "scale=2", "metrics=[psnr]"])
    assert res["images"] == 2 and (out / "metrics.json").is_file()
    assert (tmp_path / "metrics.json").read_text() == "sibling run"
    with pytest.raises(SystemExit) as e:  # nothing could be read: a user error naming the key
        main([f"lr_dir={lr}", f"out_dir={tmp_path / 'gated'}", "method=bicubic", "metrics=[]", "max_input_pixels=4"])
    assert e.value.code == 2
