"""Every VARSR experiment the README ships, run through its launcher as shipped (issue 18, "What to build" 2).

``python launch/train_varsr.py +exp=lsdir_ffhq`` (DDP), the same with ``parallel.backend=fsdp2``, and
``+exp=c2i``: started as the README says for a 2-rank gloo job (``nproc=2 run.device=cpu``), with
size overrides only (:data:`SIZES`, checked by ``tests.shipped.check_overrides``): the precision,
backend, compile, activation-checkpointing, drop-path (0.1), EMA and validation settings are the
shipped ones. Data are the bundled photos laid out as each source kind expects (an LSDIR tree, an
FFHQ folder, an IQA-negatives manifest, a folder per class); the tokenizer and the C2I start point
are tiny official-layout files.

Each run: a few steps with validation, a checkpoint, then killed mid-run (SIGTERM = pre-emption,
SIGKILL = crash); the relaunch on the other world size (one rank, ``nproc=1``, in this process
through the launcher's ``main``) resumes from the newest finished checkpoint and trains to the end;
``launch/export_checkpoint.py`` exports it and the official loader reads the file strictly, equal
to the end-of-training export.
"""

import importlib.util
import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from tests import shipped
from tests.shipped import positive

MAX_STEPS = 6
# Keys a shipped VARSR test may set: sizes, step counts (never 0 = off), data paths, run dir, workers.
SIZES = {
    "model.depth": None,
    "model.width": None,
    "model.num_heads": None,
    "model.patch_nums": None,
    "model.con_channels": None,
    "model.vocab_size": None,
    "model.cvae": None,
    "model.vae_ch": None,
    "model.diff_width": None,
    "model.diff_depth": None,
    "model.num_classes": None,  # C2I: class folders of the data + 1 (checked at start-up)
    "data.crop_size": None,
    "data.resize_shorter_to": None,
    "data.sources.*.root": None,
    "data.sources.*.resize_shorter_to": None,
    "data.batch_size": positive,
    "optim.global_batch": positive,  # a size: the launcher splits it into micro-batch x accumulation
    "data.num_workers": None,
    "schedule.max_steps": positive,
    "checkpoint.every_steps": positive,
    "validation.every_steps": positive,
    "logging.every_steps": positive,
    "validation.root": None,
    "init.vqvae": None,
    "init.c2i": None,
    "run.run_dir": None,
    "nproc": None,
    "run.device": lambda v: v == "cpu",  # the README's 2-rank gloo form
}
MODEL = [
    "model.depth=2",
    "model.width=128",
    "model.num_heads=2",
    "model.patch_nums=[1,2,3,4,5,6]",
    "model.con_channels=[16,32,32,64,64]",
    "model.vocab_size=64",
    "model.cvae=8",
    "model.vae_ch=32",
    "model.diff_width=64",
    "model.diff_depth=2",
    "data.crop_size=96",
    "data.resize_shorter_to=120",
    "data.batch_size=2",
    "optim.global_batch=4",  # lsdir_ffhq ships 32 (8 GPUs x 4): 2 x 1 on two ranks, 2 x 2 on one
    "data.num_workers=0",
    f"schedule.max_steps={MAX_STEPS}",
    "checkpoint.every_steps=2",
    "validation.every_steps=2",
    "logging.every_steps=1",
]
N_CLASSES = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bundled photos as LSDIR / FFHQ / negatives-manifest / class folders, a tiny VQVAE.pth and VARSR_C2I.pth."""
    import shutil

    from common.data.bundled import write_bundled_dataset
    from common.data.sources import write_manifest
    from varsr.model import build_models, model_config
    from varsr.official import export_official

    root = tmp_path_factory.mktemp("shipped_varsr")
    photos = sorted((write_bundled_dataset(root / "bundled", size=128) / "HR").glob("*.png"))
    lsdir = root / "LSDIR" / "HR" / "train" / "0001000"
    ffhq, classes = root / "ffhq", root / "clusters"
    for d in (lsdir, ffhq):
        d.mkdir(parents=True)
    for i, p in enumerate(photos):
        shutil.copy(p, lsdir / f"{i:07d}.png")
        shutil.copy(p, ffhq / f"{i:05d}.png")
    manifest = write_manifest([(str(p), 1) for p in photos], root / "negatives" / "manifest.csv")
    for c in range(N_CLASSES):  # the shipped holdout keeps the last 50 per class out of training
        (classes / f"c{c}").mkdir(parents=True)
        for j in range(52):
            shutil.copy(photos[(c * 3 + j) % len(photos)], classes / f"c{c}" / f"{j:03d}.png")
    torch.manual_seed(0)
    c2i, vqvae = build_models(model_config("c2i_tiny", num_classes=N_CLASSES + 1))
    export_official(c2i, None, root / "VARSR_C2I.pth")
    torch.save(vqvae.state_dict(), root / "VQVAE.pth")
    return {
        "lsdir": root / "LSDIR",
        "ffhq": ffhq,
        "manifest": manifest,
        "classes": classes,
        "val": root / "bundled" / "HR",
        "vqvae": root / "VQVAE.pth",
        "c2i": root / "VARSR_C2I.pth",
    }


def experiment(name: str, files: dict) -> tuple[list[str], list[str]]:
    """(the README's own arguments, the size overrides) of one shipped experiment."""
    if name == "c2i":
        readme = ["+exp=c2i"]
        sizes = [f"data.sources.0.root={files['classes']}", "data.sources.0.resize_shorter_to=120"]
        sizes += [f"model.num_classes={N_CLASSES + 1}", f"init.vqvae={files['vqvae']}"]
    else:
        readme = ["+exp=lsdir_ffhq"] + (["parallel.backend=fsdp2"] if name == "fsdp2" else [])
        sizes = [f"data.sources.{i}.root={files[k]}" for i, k in enumerate(("lsdir", "ffhq", "manifest"))]
        sizes += [f"data.sources.{i}.resize_shorter_to=120" for i in range(3)]
        sizes += [f"validation.root={files['val']}", f"init.vqvae={files['vqvae']}", f"init.c2i={files['c2i']}"]
    return readme, MODEL + sizes


def _launcher(name: str):
    spec = importlib.util.spec_from_file_location(f"_shipped_{name}", shipped.REPO / "launch" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _logged_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


@pytest.mark.parametrize(
    "bad",
    [
        "precision.dtype=fp32",
        "parallel.param_dtype=fp32",
        "parallel.backend=none",
        "parallel.compile=false",
        "parallel.activation_checkpointing=none",
        "model.drop_path_rate=0",
        "ema.enabled=false",
        "validation.every_steps=0",
        "checkpoint.every_steps=0",
        "run.device=cuda",
        "+model.extra=1",
    ],
)
def test_allowlist_refuses_non_size_keys(bad):
    """The size allowlist passes every override the shipped runs use and refuses each switch the guide forbids."""
    files = dict.fromkeys(("lsdir", "ffhq", "manifest", "classes", "val", "vqvae", "c2i"), "/data/x")
    for name in ("ddp", "fsdp2", "c2i"):
        shipped.check_overrides(experiment(name, files)[1] + ["run.run_dir=x", "nproc=2", "run.device=cpu"], SIZES)
    with pytest.raises(AssertionError, match="non-size keys"):
        shipped.check_overrides(["model.depth=2", bad], SIZES)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,sig",
    [("ddp", signal.SIGTERM), ("fsdp2", signal.SIGKILL), ("c2i", signal.SIGKILL)],
    ids=["ddp", "fsdp2", "c2i"],
)
def test_shipped_experiment(name, sig, files, tmp_path, one_thread):
    from varsr.model import build_models
    from varsr.official import load_official_c2i, load_official_varsr

    readme, sizes = experiment(name, files)
    run_dir = tmp_path / "run"
    sizes = sizes + [f"run.run_dir={run_dir}"]
    shipped.check_overrides(sizes + ["nproc=2", "run.device=cpu"], SIZES)

    # 1. two gloo ranks, self-spawned by the launcher; stopped after a validated checkpoint
    log = tmp_path / "two_ranks.log"
    proc = shipped.start("launch/train_varsr.py", readme + sizes + ["nproc=2", "run.device=cpu"], log)
    shipped.wait_for(
        lambda: (run_dir / "val" / "step_00000002.png").is_file() and shipped.newest_step(run_dir), proc, 500, log=log
    )
    code = shipped.kill(proc, sig)
    saved = shipped.newest_step(run_dir)
    assert saved is not None and saved < MAX_STEPS, f"run was not stopped mid-way (exit {code}):\n{shipped.tail(log)}"
    assert not (run_dir / "export").exists()  # the killed run never reached its end
    if sig == signal.SIGTERM:  # pre-emption: the ranks checkpoint the step they were in, then exit
        assert "pre-emption signal: checkpointed step" in log.read_text(), shipped.tail(log)
    assert json.loads((run_dir / "checkpoints" / f"step_{saved:08d}" / "meta.json").read_text())["world_size"] == 2

    # 2. the same command on the other world size (one rank, this process) resumes and finishes
    steps_before = len(_logged_steps(run_dir))
    result = _launcher("train_varsr").main(readme + sizes + ["nproc=1", "run.device=cpu"])
    assert result["step"] == MAX_STEPS and len(result["losses"]) == MAX_STEPS - saved
    assert _logged_steps(run_dir)[steps_before:] == list(range(saved + 1, MAX_STEPS + 1))
    assert (run_dir / "val" / f"step_{MAX_STEPS:08d}.png").is_file()

    # 3. export the newest checkpoint; the official loader reads it strictly, equal to the final export
    out = tmp_path / "exported.pth"
    got = _launcher("export_checkpoint").main(["app=varsr", f"run_dir={run_dir}", f"out={out}"])
    assert Path(got["out"]) == out and Path(got["checkpoint"]).name == f"step_{MAX_STEPS:08d}"
    from varsr.config import load_train_config

    mcfg = load_train_config(readme + sizes).model
    assert mcfg.drop_path_rate == 0.1  # the shipped rate ran
    model, _ = build_models(mcfg)
    (load_official_c2i if name == "c2i" else load_official_varsr)(out, model)
    final, _ = build_models(mcfg)
    load_official_varsr(run_dir / "export" / ("VARSR_C2I.pth" if name == "c2i" else "VARSR.pth"), final)
    for (k, a), b in zip(model.state_dict().items(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
