"""Issue 8 for the degradation and evaluation folder tools (common.paths underneath both).

Outputs overlapping an input are refused with one line and the inputs stay byte-identical;
broken files among good ones are skipped, named and counted (exit 3); existing outputs are kept
or replaced only as skip_existing / overwrite say; bad values are one line naming the key.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.io import read_image, write_image
from common.paths import (
    EXIT_SKIPPED,
    ImageRejected,
    OutputOverlapError,
    SkipLog,
    check_apart,
    check_existing,
    exit_code,
    require_dir,
)
from tests.folder_cases import (
    BROKEN,
    assert_one_line,
    load_launcher,
    make_folder,
    overlapping_outputs,
    run_script,
    tree_hash,
    user_error,
)

GOOD = {"a": (68, 72), "b": (64, 64)}


@pytest.fixture(scope="module")
def degrade():
    return load_launcher("degrade").main


@pytest.fixture(scope="module")
def evaluate():
    return load_launcher("evaluate").main


def test_check_apart_uses_real_paths(tmp_path):
    inp = tmp_path / "data" / "HR"
    inp.mkdir(parents=True)
    for out in overlapping_outputs(inp).values():
        with pytest.raises(OutputOverlapError, match="never overwrite inputs"):
            check_apart(out, "out_dir", {"hr_dir": inp})
    check_apart(tmp_path / "data" / "LR", "out_dir", {"hr_dir": inp})  # a sibling is fine
    check_apart(tmp_path / "data", "out", {"sr_dir": inp}, contains_ok=True)  # a file beside the folder
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        require_dir(tmp_path / "f", "hr_dir")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        require_dir(tmp_path / "nope", "hr_dir")


def test_degrade_refuses_overlapping_outputs_and_keeps_inputs(tmp_path, capsys, degrade):
    hr = make_folder(tmp_path / "X" / "HR", GOOD)
    before = tree_hash(hr)
    for how, out in overlapping_outputs(hr).items():
        line = user_error(capsys, degrade, [f"hr_dir={hr}", f"out_dir={out}", "degradation=varsr_mild"])
        assert "never overwrite inputs" in line, (how, line)
    assert tree_hash(hr) == before
    assert not (tmp_path / "X" / "LR").exists() and not (hr / "out").exists()


def test_degrade_skips_broken_files_and_obeys_skip_existing(tmp_path, capsys, degrade):
    hr = make_folder(tmp_path / "HR", GOOD)
    out = tmp_path / "pairs"
    args = [f"hr_dir={hr}", f"out_dir={out}", "degradation=varsr_mild", "progress=false", "device=cpu"]
    counts = degrade(args)
    assert exit_code(counts) == EXIT_SKIPPED and counts["written"] == 2 and counts["skipped"] == 3
    assert sorted(Path(p).name for p in counts["skipped_files"]) == sorted(BROKEN)
    assert sorted(p.name for p in (out / "LR").iterdir()) == ["a.png", "b.png"]
    first = tree_hash(out)
    line = user_error(capsys, degrade, args)  # outputs exist, neither key set
    assert "skip_existing=true" in line and "overwrite=true" in line
    kept = degrade(args + ["skip_existing=true"])
    assert kept["existing"] == 2 and kept["written"] == 0 and tree_hash(out) == first
    line = user_error(capsys, degrade, args + ["skip_existing=true", "seed=5"])  # kept pairs of another seed
    assert "(seed: 0 -> 5)" in line and tree_hash(out) == first
    redone = degrade(args + ["overwrite=true", "seed=5"])
    assert redone["written"] == 2 and tree_hash(out)["LR/a.png"] != first["LR/a.png"]
    assert [json.loads(x)["name"] for x in (out / "params.jsonl").read_text().splitlines()] == ["a.png", "b.png"]


@pytest.mark.parametrize(
    "arg,needle",
    [
        ("batch_size=0", "batch_size=0 is not allowed: must be >= 1"),
        ("batch_size=-1", "batch_size=-1 is not allowed"),
        ("crop=abc", "key crop: Value 'abc'"),
        ("device=gpu", "device='gpu' is not allowed"),
    ],
)
def test_degrade_bad_values_are_one_line(tmp_path, capsys, degrade, arg, needle):
    hr = make_folder(tmp_path / "HR", GOOD)
    assert needle in user_error(capsys, degrade, [f"hr_dir={hr}", f"out_dir={tmp_path / 'o'}", arg])
    assert not (tmp_path / "o").exists()  # refused before anything was written


def _sr_hr(tmp_path):
    sr = make_folder(tmp_path / "SR", GOOD, seed=2)
    hr = tmp_path / "HR"
    for name in [*GOOD, "truncated", "empty", "text"]:  # every SR name, broken ones included, has a good GT
        write_image(hr / f"{name}.png", np.zeros((*GOOD.get(name, (8, 8)), 3), np.uint8))
    return sr, hr


def test_evaluate_refuses_outputs_in_inputs_and_skips_broken(tmp_path, capsys, evaluate):
    sr, hr = _sr_hr(tmp_path)
    before = {**tree_hash(sr), **{f"hr/{k}": v for k, v in tree_hash(hr).items()}}
    base = [f"sr_dir={sr}", f"hr_dir={hr}", "metrics=[psnr]", "progress=false"]
    for out in (sr / "a.png", hr / "m.json", tmp_path / "SR_link" / "m.json"):
        (tmp_path / "SR_link").exists() or (tmp_path / "SR_link").symlink_to(sr, target_is_directory=True)
        assert "never overwrite inputs" in user_error(capsys, evaluate, base + [f"out={out}"])
    assert {**tree_hash(sr), **{f"hr/{k}": v for k, v in tree_hash(hr).items()}} == before
    summary = evaluate(base + [f"out={tmp_path / 'm.json'}"])
    assert exit_code(summary) == EXIT_SKIPPED and summary["n_images"] == 2 and summary["skipped"] == 3
    assert sorted(Path(p).name for p in summary["skipped_files"]) == sorted(BROKEN)
    rows = (tmp_path / "m_per_image.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a", "b"]
    assert "already exists" in user_error(capsys, evaluate, base + [f"out={tmp_path / 'm.json'}", "overwrite=false"])


@pytest.mark.parametrize(
    "arg,needle",
    [("crop_border=abc", "crop_border"), ("crop_border=-1", "crop_border=-1"), ("device=tpu", "device='tpu'")],
)
def test_evaluate_bad_values_are_one_line(tmp_path, capsys, evaluate, arg, needle):
    sr, hr = _sr_hr(tmp_path)
    line = user_error(capsys, evaluate, [f"sr_dir={sr}", f"hr_dir={hr}", f"out={tmp_path / 'm.json'}", arg])
    assert needle in line


def test_evaluate_file_for_a_folder(tmp_path, capsys, evaluate):
    sr, hr = _sr_hr(tmp_path)
    line = user_error(capsys, evaluate, [f"sr_dir={sr / 'a.png'}", f"hr_dir={hr}", f"out={tmp_path / 'm.json'}"])
    assert "is a file, not a folder" in line and "sr_dir=" in line


@pytest.mark.slow  # two interpreter start-ups (torch + Hydra)
def test_degrade_and_evaluate_processes_exit_codes(tmp_path):
    hr = make_folder(tmp_path / "X" / "HR", GOOD)
    before = tree_hash(hr)
    res = run_script("degrade", [f"hr_dir={hr}", f"out_dir={tmp_path / 'X'}"])
    assert_one_line(res, "out_dir=", "contains the input folder hr_dir=")
    res = run_script("degrade", [f"hr_dir={hr}", f"out_dir={tmp_path / 'pairs'}", "degradation=varsr_mild"])
    assert res.returncode == EXIT_SKIPPED, res.stderr[-2000:]
    assert all(name in res.stdout for name in BROKEN) and "2 done, 3 skipped" in res.stdout
    assert read_image(tmp_path / "pairs" / "LR" / "a.png").shape == (17, 18, 3)
    assert tree_hash(hr) == before
    res = run_script(
        "evaluate",
        [
            f"sr_dir={tmp_path / 'pairs' / 'HR'}",
            f"hr_dir={tmp_path / 'pairs' / 'HR'}",
            "metrics=[psnr]",
            f"out={tmp_path / 'pairs' / 'HR' / 'm.json'}",
        ],
    )
    assert_one_line(res, "out=", "is the input folder")


class _Restorer:
    """Stands in for pure.restore.Restorer: rejects images narrower than 5 px, echoes the rest."""

    scale = None  # native size: a batch is one generation

    def __init__(self):
        self.calls = []

    def restore(self, imgs, generator):
        self.calls.append(len(imgs))
        for img in imgs:
            if img.shape[1] < 5:
                raise ImageRejected(f"input is {img.shape[1]}x{img.shape[0]} px; the minimum is 5x5")
        return [img.shape for img in imgs]


def test_rejected_image_in_a_batch_is_skipped_and_the_rest_restored():
    from pure.evaluate import _restore_or_skip

    imgs = [np.zeros((8, w, 3), np.uint8) for w in (8, 3, 6)]
    skips, fake = SkipLog("test"), _Restorer()
    out = _restore_or_skip(fake, list(enumerate(imgs)), None, skips, lambda i: f"img{i}.png")
    assert out == [(0, (8, 8, 3)), (2, (8, 6, 3))] and fake.calls == [3, 1, 1, 1]
    assert skips.skipped == ["img1.png"] and "minimum is 5x5" in skips.reasons[0]


def test_nothing_readable_is_a_user_error(tmp_path, capsys, degrade):
    hr = make_folder(tmp_path / "HR", GOOD)
    for name in GOOD:
        (hr / f"{name}.png").unlink()
    line = user_error(capsys, degrade, [f"hr_dir={hr}", f"out_dir={tmp_path / 'o'}", "degradation=varsr_mild"])
    assert "none of the 3 input file(s) could be processed" in line


def test_arsr_debug_shows_the_traceback(tmp_path, monkeypatch, degrade):
    hr = make_folder(tmp_path / "HR", GOOD)
    monkeypatch.setenv("ARSR_DEBUG", "1")
    with pytest.raises(OutputOverlapError):  # the original exception, not a one-line exit
        degrade([f"hr_dir={hr}", f"out_dir={hr}"])


def test_overwrite_wins_over_skip_existing(tmp_path):
    """Sampling keeps outputs by default (skip_existing=true); overwrite=true alone must redo them."""
    (tmp_path / "a.png").write_bytes(b"x")
    outputs = {"a": ["a.png"], "b": ["b.png"]}
    assert check_existing(tmp_path, outputs, "out_dir", skip_existing=True, overwrite=False) == {"a"}
    assert check_existing(tmp_path, outputs, "out_dir", skip_existing=True, overwrite=True) == set()
    assert check_existing(tmp_path, outputs, "out_dir", skip_existing=False, overwrite=True) == set()
