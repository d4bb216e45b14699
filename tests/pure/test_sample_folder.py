"""Issue 8 for launch/sample_pure.py: overlap refusal, skip-and-count, one-line user errors.

The tiny model is exported as HF shards (+ tokenizer) and the tiny VQ in LlamaGen's layout, so
the checkpoint errors come from the loaders a user hits (pure.official).
"""

import shutil
from pathlib import Path

import pytest
import torch

from common.data.io import read_image
from common.paths import EXIT_SKIPPED, exit_code
from pure.official import save_hf_shards
from tests.folder_cases import (
    BROKEN,
    assert_overlap_refused,
    assert_process_exit_codes,
    load_launcher,
    make_folder,
    user_error,
)

GOOD = {"p0": (12, 16), "p1": (10, 10)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, test_tokenizer_path):
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.model.vq import VQModel, vq_config

    d = tmp_path_factory.mktemp("pure_ckpt")
    torch.manual_seed(0)
    model = ChameleonForCausalLM(chameleon_config("tiny")).eval()
    save_hf_shards(model, d / "PURE", max_shard_size="2MB", config=model.config, dtype=None)
    shutil.copy(test_tokenizer_path, d / "PURE" / "tokenizer.json")
    torch.save({"model": VQModel(vq_config("tiny")).state_dict()}, d / "vq.pt")
    torch.save({"state_dict": {}}, d / "not_llamagen.pt")
    shutil.copytree(d / "PURE", d / "PURE_corrupt")
    shard = sorted((d / "PURE_corrupt").glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\xff" * 64)  # safetensors says only "HeaderTooLarge" about this
    return d


@pytest.fixture(scope="module")
def sample():
    return load_launcher("sample_pure").main


def _args(ckpts, lr, out, *extra):
    return [
        "model=tiny",
        "device=cpu",
        "metrics=[]",
        f"ckpt_dir={ckpts / 'PURE'}",
        f"vq_ckpt={ckpts / 'vq.pt'}",
        "vq_size=tiny",
        "resolution=8",
        "image_only=true",
        "max_new_tokens=30",
        f"lr_dir={lr}",
        f"out_dir={out}",
        *extra,
    ]


def test_overlapping_outputs_refused_inputs_untouched(tmp_path, capsys, sample, ckpts):
    lr = make_folder(tmp_path / "set" / "LR", GOOD)
    assert_overlap_refused(capsys, sample, lambda out: _args(ckpts, lr, out), lr)


@pytest.mark.slow  # a tiny model restores two images on CPU (~20-30 s on 2 loaded cores)
def test_broken_files_skipped_and_counted(tmp_path, capsys, caplog, sample, ckpts):
    lr = make_folder(tmp_path / "LR", GOOD)
    out = tmp_path / "run" / "sr"
    result = sample(_args(ckpts, lr, out))
    assert exit_code(result) == EXIT_SKIPPED and result["skipped"] == 3
    summary = result["summary"]
    assert summary["images"] == 2 and sorted(Path(p).name for p in summary["skipped_files"]) == sorted(BROKEN)
    assert sorted(p.name for p in out.iterdir()) == [
        "p0.json",
        "p0.png",
        "p1.json",
        "p1.png",
        "run_settings.json",
        "summary.json",
    ]
    assert read_image(out / "p0.png").ndim == 3 and read_image(out / "p1.png").ndim == 3  # real, readable PNGs
    logged = caplog.text + capsys.readouterr().out
    assert all(f"skipped {lr / name}" in logged for name in BROKEN)
    line = user_error(capsys, sample, _args(ckpts, lr, out, "skip_existing=false"))
    assert "already holds 4 output(s)" in line


@pytest.mark.parametrize(
    "case",
    [
        "missing_ckpt_dir",
        "ckpt_dir_is_file",
        "corrupt_shard",
        "wrong_vq",
        "missing_vq",
        "out_is_file",
        "out_unwritable",
        "lr_is_file",
        "color_fix",
        "batch_size",
        "batch_size_neg",
        "sjd_scheme",
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, sample, ckpts, case):
    lr = make_folder(tmp_path / "LR", GOOD)
    (tmp_path / "file").write_text("x")
    args, expect = {
        "missing_ckpt_dir": ([f"ckpt_dir={tmp_path / 'nope'}"], f"ckpt_dir={tmp_path / 'nope'} does not exist"),
        "ckpt_dir_is_file": ([f"ckpt_dir={tmp_path / 'file'}"], "is a file, not a folder"),
        "corrupt_shard": ([f"ckpt_dir={ckpts / 'PURE_corrupt'}"], "not a readable safetensors shard"),
        "wrong_vq": ([f"vq_ckpt={ckpts / 'not_llamagen.pt'}"], "not_llamagen.pt: expected a dict with a 'model'"),
        "missing_vq": ([f"vq_ckpt={tmp_path / 'vq.pt'}"], f"vq_ckpt={tmp_path / 'vq.pt'} does not exist"),
        "out_is_file": ([f"out_dir={tmp_path / 'file'}"], "is a file, not a folder"),
        "out_unwritable": (["out_dir=/sys/arsr_cannot_write_here"], "cannot be created"),
        "lr_is_file": ([f"lr_dir={tmp_path / 'file'}"], "is a file, not a folder"),
        "color_fix": (["color_fix=bogus"], "color_fix='bogus' is not allowed"),
        "batch_size": (["batch_size=0"], "batch_size=0 is not allowed: must be >= 1"),
        "batch_size_neg": (["batch_size=-1"], "batch_size=-1 is not allowed"),
        "sjd_scheme": (["sjd.scheme=magic"], "sjd.scheme='magic' is not allowed"),
    }[case]
    line = user_error(capsys, sample, _args(ckpts, lr, tmp_path / "out") + args)
    assert expect in line, line
    if case == "corrupt_shard":
        assert "PURE_corrupt/model-" in line  # names the file, not only "header too large"


@pytest.mark.slow  # two interpreter start-ups and a tiny model on two images
def test_launcher_process_exit_codes(tmp_path, ckpts):
    lr = make_folder(tmp_path / "LR", GOOD)
    assert_process_exit_codes(
        "sample_pure",
        lambda out: _args(ckpts, lr, out),
        lr,
        tmp_path / "run" / "sr",
        ["p0.json", "p0.png", "p1.json", "p1.png", "summary.json"],
    )
