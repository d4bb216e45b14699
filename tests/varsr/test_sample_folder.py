"""Issue 8 for launch/sample_varsr.py: overlap refusal, skip-and-count, one-line user errors.

A real tiny checkpoint (exported in the official layout) is loaded, so the checkpoint errors
come from the same loaders a user hits; the LR folder mixes good images with broken files.
"""

from pathlib import Path

import pytest
import torch

from common.data.io import read_image
from common.paths import EXIT_SKIPPED, exit_code
from tests.folder_cases import (
    BROKEN,
    assert_overlap_refused,
    assert_process_exit_codes,
    load_launcher,
    make_folder,
    tree_hash,
    user_error,
)
from varsr.model import build_models
from varsr.official import export_official

GOOD = {"g0": (12, 16), "g1": (10, 10)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("varsr_ckpt")
    torch.manual_seed(0)
    model, vqvae = build_models("tiny")
    export_official(model, vqvae, d / "VARSR.pth")  # holds both var_wo_ddp and vae_local
    torch.save({"trainer": {"vae_local": {}}}, d / "VQVAE_only.pth")
    (d / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    return d


@pytest.fixture(scope="module")
def sample():
    return load_launcher("sample_varsr").main


def _args(ckpts, lr, out, *extra):
    return [
        "model=tiny",
        "device=cpu",
        "metrics=[]",
        f"ckpt={ckpts / 'VARSR.pth'}",
        f"vae_ckpt={ckpts / 'VARSR.pth'}",
        f"lr_dir={lr}",
        f"out_dir={out}",
        *extra,
    ]


def test_overlapping_outputs_refused_inputs_untouched(tmp_path, capsys, sample, ckpts):
    lr = make_folder(tmp_path / "set" / "LR", GOOD)
    assert_overlap_refused(capsys, sample, lambda out: _args(ckpts, lr, out), lr)
    hr = make_folder(tmp_path / "set" / "HR", GOOD)
    before = tree_hash(hr)
    assert "hr_dir=" in user_error(capsys, sample, _args(ckpts, lr, hr / "sr", f"hr_dir={hr}"))
    assert tree_hash(hr) == before


@pytest.mark.slow  # a tiny model restores two images on CPU (~20-30 s on 2 loaded cores)
def test_broken_files_skipped_and_counted(tmp_path, capsys, caplog, sample, ckpts):
    lr = make_folder(tmp_path / "LR", GOOD)
    out = tmp_path / "out" / "sr"
    result = sample(_args(ckpts, lr, out))
    assert exit_code(result) == EXIT_SKIPPED and result["images"] == 2 and result["skipped"] == 3
    assert sorted(Path(p).name for p in result["skipped_files"]) == sorted(BROKEN)
    assert sorted(p.name for p in out.iterdir()) == ["g0.png", "g1.png", "run_settings.json"]
    assert read_image(out / "g0.png").shape == (48, 64, 3) and read_image(out / "g1.png").shape == (40, 40, 3)
    logged = caplog.text + capsys.readouterr().out  # the rank-aware logger prints to stdout
    assert all(f"skipped {lr / name}" in logged for name in BROKEN)  # one warning naming each file
    again = sample(_args(ckpts, lr, out))  # skip_existing (default): nothing redone, outputs kept
    assert again["images"] == 2 and again["skipped"] == 3
    # an image over the pixel limit is one skipped image with its reason, not the end of the run
    limited = sample(_args(ckpts, lr, tmp_path / "lim", "max_output_pixels=2000"))  # g0: 48x64 = 3072 px
    assert limited["images"] == 1 and limited["skipped"] == 4 and (tmp_path / "lim" / "g1.png").is_file()
    assert "g0.png: output 64x48 = 3072 px exceeds max_output_pixels=2000" in caplog.text + capsys.readouterr().out
    line = user_error(capsys, sample, _args(ckpts, lr, tmp_path / "lim2", "max_output_pixels=100"))
    assert "none of the 5 input file(s) could be processed" in line
    line = user_error(capsys, sample, _args(ckpts, lr, out, "skip_existing=false"))
    assert "already holds 2 output(s)" in line and "overwrite=true" in line


@pytest.mark.parametrize(
    "case",
    [
        "missing_ckpt",
        "wrong_ckpt",
        "corrupt_safetensors",
        "ckpt_is_folder",
        "out_is_file",
        "out_unwritable",
        "lr_is_file",
        "lr_missing",
        "color_fix",
        "scale",
        "top_p",
        "dtype",
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, sample, ckpts, case):
    lr = make_folder(tmp_path / "LR", GOOD)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    args = {
        "missing_ckpt": [f"ckpt={tmp_path / 'nope.pth'}"],
        "wrong_ckpt": [f"ckpt={ckpts / 'VQVAE_only.pth'}"],
        "corrupt_safetensors": [f"vae_ckpt={ckpts / 'corrupt.safetensors'}"],
        "ckpt_is_folder": [f"ckpt={ckpts}"],
        "out_is_file": [f"out_dir={tmp_path / 'file'}"],
        "out_unwritable": ["out_dir=/sys/arsr_cannot_write_here"],  # EPERM even for root
        "lr_is_file": [f"lr_dir={tmp_path / 'file'}"],
        "lr_missing": [f"lr_dir={tmp_path / 'nope'}"],
        "color_fix": ["color_fix=bogus"],
        "scale": ["scale=0"],
        "top_p": ["top_p=2"],
        "dtype": ["dtype=fp8"],
    }[case]
    expect = {
        "missing_ckpt": "nope.pth does not exist",
        "wrong_ckpt": "VQVAE_only.pth: missing key trainer/var_wo_ddp",
        "corrupt_safetensors": "corrupt.safetensors: not a readable safetensors file",
        "ckpt_is_folder": "is a folder, not a checkpoint file",
        "out_is_file": "is a file, not a folder",
        "out_unwritable": "cannot be created",
        "lr_is_file": "lr_dir=",
        "lr_missing": "does not exist",
        "color_fix": "color_fix='bogus' is not allowed: must be one of adain, wavelet, none",
        "scale": "scale=0 is not allowed",
        "top_p": "top_p=2",
        "dtype": "dtype='fp8'",
    }[case]
    line = user_error(capsys, sample, _args(ckpts, lr, out) + args)
    assert expect in line, line
    if case == "lr_is_file":
        assert "is a file, not a folder" in line


@pytest.mark.slow  # two interpreter start-ups and a tiny model on two images
def test_launcher_process_exit_codes(tmp_path, ckpts):
    lr = make_folder(tmp_path / "LR", GOOD)
    assert_process_exit_codes(
        "sample_varsr", lambda out: _args(ckpts, lr, out), lr, tmp_path / "run" / "sr", ["g0.png", "g1.png"]
    )
