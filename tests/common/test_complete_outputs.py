"""Outputs made of several files are complete only when all exist, and a killed run leaves none that looks
complete: the degradation folder tool (HR + LR + params line) and folder evaluation (CSV + MD + JSON).

The expectation is always an uninterrupted run: a run killed part-way through redoing an older run's
outputs (``overwrite=true``, another seed), then resumed with ``skip_existing=true``, must end with
exactly the files a clean run writes. Bugs these catch: a pair counted done from its two images while
its params line is an older run's (or the other way round), a new HR kept beside an old LR, an old
metrics JSON left beside new per-image rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import common.degradation.folder as dfolder
from common.data.io import write_image
from common.degradation import get_preset
from common.degradation.folder import DegradeConfig, degrade_folder


class Killed(BaseException):
    """A kill (SIGKILL / pre-emption) at a chosen write; BaseException so no handler swallows it."""


def _kill_after(monkeypatch, module, name, n, only=lambda path: True):
    """``module.name`` writes its first ``n`` calls (counting those whose path passes ``only``), then
    the run dies before the next one."""
    real, calls = getattr(module, name), []

    def write(*a, **k):
        if only(a[0]):
            if len(calls) == n:
                raise Killed(f"killed before write {n + 1}")
            calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(module, name, write)
    return calls


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def degrade_case(tmp_path_factory):
    """Three HR images, the degrade options, and a clean seed-1 run's files."""
    d = tmp_path_factory.mktemp("degrade")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(d / "hr" / f"im{i}.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    base = dict(hr_dir=str(d / "hr"), degradation=get_preset("realesrgan"), batch_size=1, progress=False, min_size=8)
    degrade_folder(DegradeConfig(out_dir=str(d / "clean"), seed=1, **base))
    return base, _files(d / "clean")


@pytest.mark.parametrize("kill_at", [1, 3])  # after HR of pair 0 (its LR still the old one) / HR of pair 1
def test_degrade_killed_while_redoing_then_resumed_equals_a_clean_run(tmp_path, degrade_case, monkeypatch, kill_at):
    base, clean = degrade_case
    out = tmp_path / "out"
    degrade_folder(DegradeConfig(out_dir=str(out), seed=0, **base))  # an older, complete run
    with monkeypatch.context() as m:
        _kill_after(m, dfolder, "write_image", kill_at)
        with pytest.raises(Killed):
            degrade_folder(DegradeConfig(out_dir=str(out), seed=1, overwrite=True, **base))
    counts = degrade_folder(DegradeConfig(out_dir=str(out), seed=1, skip_existing=True, **base))
    assert _files(out) == clean
    assert counts["existing"] == kill_at // 2  # only pairs whose HR, LR and line were all written


def test_degrade_killed_mid_run_keeps_finished_pairs(tmp_path, degrade_case, monkeypatch):
    """A fresh run killed after 2 pairs resumes from them (their lines survive the kill), not from zero."""
    base, clean = degrade_case
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _kill_after(m, dfolder, "write_image", 5)  # HR+LR of pairs 0 and 1, HR of pair 2
        with pytest.raises(Killed):
            degrade_folder(DegradeConfig(out_dir=str(out), seed=1, **base))
    assert [json.loads(x)["name"] for x in (out / "params.jsonl").read_text().splitlines()] == ["im0.png", "im1.png"]
    counts = degrade_folder(DegradeConfig(out_dir=str(out), seed=1, skip_existing=True, **base))
    assert counts["existing"] == 2 and counts["written"] == 1
    assert _files(out) == clean


def test_evaluation_killed_while_rewriting_leaves_no_summary(tmp_path, monkeypatch):
    import common.checkpoint as ck
    from common.metrics import evaluate_folders

    sr, hr = tmp_path / "sr", tmp_path / "hr"
    for name, v in (("a", 100), ("b", 150)):
        write_image(hr / f"{name}.png", np.full((16, 16, 3), v, np.uint8))
        write_image(sr / f"{name}.png", np.full((16, 16, 3), v + 4, np.uint8))
    out = tmp_path / "res" / "metrics.json"
    evaluate_folders(sr, hr, ["psnr"], out, device="cpu", show_progress=False)
    assert out.is_file()
    write_image(sr / "a.png", np.full((16, 16, 3), 130, np.uint8))  # the outputs changed
    with monkeypatch.context() as m:
        _kill_after(m, ck, "atomic_write_bytes", 1)  # the per-image CSV written, then killed
        with pytest.raises(Killed):
            evaluate_folders(sr, hr, ["psnr"], out, device="cpu", show_progress=False, overwrite=True)
    assert not out.exists()  # the old summary no longer vouches for the new rows
    summary = evaluate_folders(sr, hr, ["psnr"], out, device="cpu", show_progress=False)
    y = 219 / 255  # a grey step of d in RGB is d x 219/255 in BT.601 Y (the papers' PSNR channel)
    assert summary["mean"]["psnr"] == pytest.approx((20 * np.log10(255 / (30 * y)) + 20 * np.log10(255 / (4 * y))) / 2)
