"""Every file a run writes lives under its own output folder (issue 16, bad cases 3, 4 and 10).

A sibling run's files next to ``out_dir`` (``metrics.json``, ``summary.json``, ``test_tokenizer/``)
must stay byte-identical; Hydra's sweep folder is an output like ``out_dir``; the tokenizer
fine-tuning never writes into its own training images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.folder_cases import load_launcher, tree_hash, user_error


def _pairs(d, n=2, side=8, seed=0):
    rng = np.random.default_rng(seed)
    for sub, k in (("LR", 1), ("HR", 4)):
        (d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((side * k, side * k, 3)) * 255).astype(np.uint8)).save(d / sub / f"i{i}.png")
    return d / "LR", d / "HR"


def _sibling_files(shared):
    """What a sibling run left in the shared parent folder."""
    shared.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "metrics.md", "metrics_per_image.csv", "summary.json"):
        (shared / name).write_text(f"sibling run's {name}\n")
    (shared / "test_tokenizer").mkdir()
    (shared / "test_tokenizer" / "tokenizer.json").write_text("{}\n")
    return tree_hash(shared)


def test_varsr_sampling_writes_metrics_inside_out_dir(tmp_path, monkeypatch):
    import varsr.evaluate as ve

    lr, hr = _pairs(tmp_path / "set")
    shared = tmp_path / "runs"
    before = _sibling_files(shared)
    # the model is not what is tested here: a stub upsamples, so only the file places matter
    monkeypatch.setattr(ve, "load_models", lambda cfg, device: (None, None))
    monkeypatch.setattr(ve, "sr_one", lambda m, v, img, cfg, *a, **k: torch.ones(1, 3, 32, 32) * 0.5)
    main = load_launcher("sample_varsr").main
    out = shared / "mine"
    res = main([f"lr_dir={lr}", f"hr_dir={hr}", f"out_dir={out}", "model=tiny", "ckpt=null", "vae_ckpt=null"])
    assert res["images"] == 2 and "psnr" in res["mean"]
    assert tree_hash(shared) == {**before, **{f"mine/{k}": v for k, v in tree_hash(out).items()}}
    assert sorted(p.name for p in out.iterdir()) == [
        "i0.png",
        "i1.png",
        "metrics.json",
        "metrics.md",
        "metrics_per_image.csv",
        "run_settings.json",
    ]


def test_pure_sampling_writes_summary_and_tokenizer_nowhere_else(tmp_path, monkeypatch):
    import pure.evaluate as pe
    from pure.restore import RestoreResult

    class Stub:  # components load for real (stand-in tokenizer included); generation is not tested here
        scale = None

        def restore(self, lqs, generator=None):
            return [RestoreResult(image=torch.full((3, 16, 16), 0.5), lq=torch.zeros(3, 4, 4), ok=True) for _ in lqs]

    monkeypatch.setattr(pe, "build_restorer", lambda *a, **k: Stub())
    lr, hr = _pairs(tmp_path / "set", n=1, side=4)
    shared = tmp_path / "runs"
    before = _sibling_files(shared)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the web demo used to build the stand-in tokenizer in ./test_tokenizer
    out = shared / "mine"
    args = ["model=tiny", "ckpt_dir=null", "vq_ckpt=null", "vq_size=tiny", "resolution=8", "image_only=true"]
    args += ["max_new_tokens=30", "device=cpu", "metrics=[psnr]", f"lr_dir={lr}", f"hr_dir={hr}", f"out_dir={out}"]
    load_launcher("sample_pure").main(args)
    assert tree_hash(shared) == {**before, **{f"mine/{k}": v for k, v in tree_hash(out).items()}}
    assert {"summary.json", "metrics.json", "i0.png", "i0.json"} <= {p.name for p in out.iterdir()}
    assert list(cwd.iterdir()) == []


def test_evaluate_sweep_dir_at_an_input_folder_is_refused(tmp_path, capsys):
    # bad case 4: hydra.sweep.dir=<an input folder> overwrote its sweep_summary.png, exit 0
    _, hr = _pairs(tmp_path / "set")
    (hr / "sweep_summary.png").write_bytes((hr / "i0.png").read_bytes())  # an input image of that name
    a, b = tmp_path / "A", tmp_path / "B"
    for d in (a, b):
        d.mkdir()
        for p in hr.iterdir():
            (d / p.name).write_bytes(p.read_bytes())
    before = {d: tree_hash(d) for d in (a, b, hr)}
    main = load_launcher("evaluate").main
    common = [f"hr_dir={hr}", "metrics=[psnr]", "progress=false", "out=m.json"]
    for sweep_dir, needle in (
        (a, "is the input folder sr_dir="),
        (hr / "sweeps", "is inside the input folder hr_dir="),
    ):
        line = user_error(capsys, main, ["-m", f"sr_dir={a},{b}", *common, f"hydra.sweep.dir={sweep_dir}"])
        assert line.startswith(f"error: hydra.sweep.dir={sweep_dir} ") and needle in line, line
    assert {d: tree_hash(d) for d in (a, b, hr)} == before and not (hr / "sweeps").exists()


def test_finetune_vq_never_writes_into_its_training_images(tmp_path, capsys):
    # bad case 10: out= inside the data folder replaced a training image by the tokenizer file
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    before = tree_hash(photos)
    main = load_launcher("finetune_vq").main
    data = f"data.sources=[{{root: '{photos}', kind: folder}}]"
    base = ["app=pure", "size=tiny", "crop_size=16", "eval_size=32", "steps=1", "wandb_mode=disabled", data]
    line = user_error(capsys, main, [*base, f"out={photos / 'p0.png'}"])
    assert "out=" in line and "is inside the input folder data.sources.0.root=" in line
    line = user_error(capsys, main, [*base, f"out={tmp_path / 'vq.pt'}", f"run_dir={photos / 'run'}"])
    assert "run_dir=" in line and "data.sources.0.root=" in line
    assert tree_hash(photos) == before and sorted(p.name for p in photos.iterdir()) == ["p0.png", "p1.png"]


@pytest.mark.parametrize("key", ["lr_dir", "hr_dir"])
def test_sampling_sweep_dir_inside_an_input_is_refused(tmp_path, capsys, key):
    lr, hr = _pairs(tmp_path / "set")
    before = tree_hash(tmp_path / "set")
    target = {"lr_dir": lr, "hr_dir": hr}[key]
    args = ["-m", "cfg=4,6", f"lr_dir={lr}", f"hr_dir={hr}", "model=tiny", "ckpt=null", "vae_ckpt=null"]
    line = user_error(capsys, load_launcher("sample_varsr").main, [*args, f"hydra.sweep.dir={target / 'sw'}"])
    assert f"is inside the input folder {key}=" in line
    assert tree_hash(tmp_path / "set") == before
