"""MetricStack loading learned metrics offline, and evaluate_folders / launch/evaluate.py outputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.data.bundled import bundled_pairs
from common.data.io import write_image
from common.data.test_sets import PairingError
from common.metrics import MetricStack, MetricWeightsError, evaluate_folders, psnr_y

LPIPS_CHANNELS = [64, 192, 384, 256, 256]  # AlexNet feature widths the LPIPS heads sit on


def _lpips_weights_dir(path):
    """A weights_dir holding a random AlexNet backbone and random LPIPS heads under the real names."""
    import torchvision

    torch.manual_seed(0)
    (path / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), path / "checkpoints" / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}
    torch.save(heads, path / "LPIPS_v0.1_alex-df73285e.pth")
    return heads


def test_lpips_loads_from_weights_dir(tmp_path):
    heads = _lpips_weights_dir(tmp_path)
    stack = MetricStack(["lpips", "psnr"], weights_dir=tmp_path)
    net = stack._learned["lpips"].net
    torch.testing.assert_close(net.lin2.model[1].weight, heads["lin2.model.1.weight"])
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 64, 64, generator=g)
    sr = (hr + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    s1, s2 = stack.score(sr, hr), stack.score(sr, hr)
    assert s1["lpips"].shape == (2,) and s1["lpips"].dtype == torch.float64
    torch.testing.assert_close(s1["lpips"], s2["lpips"])  # eval mode: deterministic
    assert (s1["lpips"] > 0).all() and stack.score(hr, hr)["lpips"].abs().max() < 1e-6
    torch.testing.assert_close(s1["psnr"], psnr_y(sr, hr))
    with pytest.raises(ValueError, match="need an HR reference"):
        stack.score(sr)


class _NotAllowed:  # an arbitrary pickled object: weights_only=True must refuse it
    pass


def test_untrusted_pickle_refused(tmp_path):
    _lpips_weights_dir(tmp_path)
    torch.save({"payload": _NotAllowed()}, tmp_path / "LPIPS_v0.1_alex-df73285e.pth")
    with pytest.raises(MetricWeightsError, match="weights_only=True"):
        MetricStack(["lpips"], weights_dir=tmp_path)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(MetricWeightsError, match="alexnet-owt-7be5be79.pth"):
        MetricStack(["lpips"], weights_dir=tmp_path)  # backbone missing: no download attempt
    with pytest.raises(MetricWeightsError, match="RN50.pt"):
        MetricStack(["clipiqa"], weights_dir=tmp_path)  # CLIP: no download either
    with pytest.raises(ValueError, match="unknown metric"):
        MetricStack(["psnr", "no_such_metric"])


def test_no_reference_folder_without_hr(tmp_path):
    from common.data.bundled import bundled_photos, fit_square

    write_image(tmp_path / "lq" / "astronaut.png", fit_square(bundled_photos()[0][1], 192))
    s = evaluate_folders(
        tmp_path / "lq", None, ["niqe"], tmp_path / "nr.json", weights_dir=tmp_path / "w", show_progress=False
    )
    assert s["hr_dir"] is None and s["n_images"] == 1 and np.isfinite(s["mean"]["niqe"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    for name, _, hr in bundled_pairs(size=64):
        write_image(root / "HR" / f"{name}.png", hr)
        sr = np.clip(hr.astype(int) + rng.integers(-12, 13, hr.shape), 0, 255).astype(np.uint8)
        write_image(root / "SR" / f"{name}.png", sr)
    return root


def test_evaluate_folders_outputs(folders, tmp_path):
    out = tmp_path / "res" / "bicubic.json"
    summary = evaluate_folders(folders / "SR", folders / "HR", ["psnr", "ssim"], out, show_progress=False)
    assert summary["n_images"] == 6 and set(summary["mean"]) == {"psnr", "ssim"}
    assert "pyiqa_version" in summary and "Y (BT.601" in summary["variants"]["psnr"]
    rows = list(csv.DictReader(open(out.with_name("bicubic_per_image.csv"))))
    assert [r["name"] for r in rows][:2] == ["astronaut", "chelsea"] and len(rows) == 6
    from common.data.io import read_image

    p0 = float(psnr_y(read_image(folders / "SR/astronaut.png"), read_image(folders / "HR/astronaut.png")))
    assert float(rows[0]["psnr"]) == pytest.approx(p0, abs=1e-9)
    assert summary["mean"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-9)
    assert json.loads(out.read_text())["mean"] == summary["mean"]
    md = out.with_suffix(".md").read_text().splitlines()
    assert md[0].startswith("| set | n | psnr | ssim |") and "| SR | 6 |" in md[2]


def test_evaluate_folders_errors(folders, tmp_path):
    sr = tmp_path / "sr"
    for p in (folders / "SR").iterdir():
        if p.stem != "rocket":
            write_image(sr / p.name, read_from(p))
    with pytest.raises(PairingError, match="rocket"):
        evaluate_folders(sr, folders / "HR", ["psnr"], tmp_path / "x.json", show_progress=False)
    write_image(sr / "rocket.png", np.zeros((60, 64, 3), np.uint8))
    with pytest.raises(PairingError, match="rocket: size mismatch"):
        evaluate_folders(sr, folders / "HR", ["psnr"], tmp_path / "x.json", show_progress=False)
    with pytest.raises(ValueError, match="need hr_dir"):
        evaluate_folders(sr, None, ["psnr"], tmp_path / "x.json", show_progress=False)


def read_from(p):
    from common.data.io import read_image

    return read_image(p)


@pytest.mark.slow  # two interpreter start-ups with torch + hydra
def test_launcher_cli(folders, tmp_path, repo_root):
    out = tmp_path / "cli.json"
    cmd = [
        sys.executable,
        str(repo_root / "launch/evaluate.py"),
        f"sr_dir={folders / 'SR'}",
        f"hr_dir={folders / 'HR'}",
        "metrics=[psnr,ssim]",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads(out.read_text())["mean"]) == {"psnr", "ssim"}
    bad = subprocess.run(
        cmd[:2] + [f"sr_dir={tmp_path / 'nope'}"] + cmd[3:], capture_output=True, text=True, timeout=120, cwd=repo_root
    )
    assert bad.returncode == 2 and "sr_dir=" in bad.stderr and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow  # Inception forward on 12 images + building it twice
def test_fid_between_folders_offline(folders, tmp_path, monkeypatch):
    from common.metrics.learned import _install_hooks

    _install_hooks()
    import pyiqa.archs.fid_arch as fid_arch
    import pyiqa.archs.inception as inc

    torch.manual_seed(0)  # random Inception saved under the real file name: exercises the offline path
    monkeypatch.setattr(inc, "load_pretrained_network", lambda *a, **k: None)
    sd = inc.fid_inception_v3().state_dict()
    monkeypatch.undo()
    torch.save(sd, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    # pyiqa's own Frechet distance needs two 2048x2048 sqrtm (minutes on 2 busy cores, and
    # meaningless for 6 images); here we check our plumbing: which features reach it and that
    # its value is what we report.
    seen = []

    def fake_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
        seen.append((mu1.shape, sigma1.shape))
        return float(np.abs(mu1 - mu2).sum())

    monkeypatch.setattr(fid_arch, "frechet_distance", fake_frechet)
    stack = MetricStack(["psnr", "fid"], weights_dir=tmp_path)
    s = evaluate_folders(folders / "SR", folders / "HR", None, tmp_path / "f.json", stack=stack, show_progress=False)
    assert seen == [((2048,), (2048, 2048))]
    assert s["mean"]["fid"] > 0 and stack.folder_metric("fid", folders / "HR", folders / "HR") == 0.0
    assert list(s["mean"]) == ["psnr", "fid"] and "fid" in s["lower_better"]
    # An unreadable SR file is skipped and counted, and FID is computed over the pairs that were
    # read (the same value as without that file), not crashed on inside pyiqa's loader.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folders, broken)
    (broken / "SR" / "zz_bad.png").write_bytes(b"not a png")
    shutil.copy(next((folders / "HR").iterdir()), broken / "HR" / "zz_bad.png")
    b = evaluate_folders(broken / "SR", broken / "HR", None, tmp_path / "b.json", stack=stack, show_progress=False)
    assert b["skipped"] == 1 and b["n_images"] == 6 and "zz_bad.png" in str(b["skipped_files"])
    assert b["mean"]["fid"] == s["mean"]["fid"] and b["mean"]["psnr"] == s["mean"]["psnr"]
