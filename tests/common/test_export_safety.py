"""Issue 16, exports: written like checkpoints (temp folder, verified, swapped in), never over an
existing output without overwrite=true, never a mix of two steps (kill -9 mid-export), a step pruned
by the running trainer replaced by the newest finished one, a full disk in one line."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common.train_state import TrainState, step_dir
from launch.export_checkpoint import main as export_main
from tests.folder_cases import user_error

ROOT = Path(__file__).resolve().parents[2]


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def pure_run(tmp_path):
    """A PURE run dir with steps 1 and 2 of the tiny model (different weights), as training writes them."""
    from pure.build import build_lm
    from pure.losses import PureLoss
    from pure.train import _plain
    from tests.pure.test_train import make_cfg

    cfg = make_cfg(tmp_path, n_records=2, **{"export.max_shard_size": "200KB", "export.dtype": "fp32"})
    torch.manual_seed(0)
    root = PureLoss(build_lm(cfg, torch.device("cpu")))
    ts = TrainState(cfg.run.run_dir, root, None, keep=2, app="pure")
    weights = {}
    for step in (1, 2):
        with torch.no_grad():
            for p in root.parameters():
                p.add_(0.01 * step)
        ts.save(step, extra={"config": _plain(cfg)})
        weights[step] = {k.removeprefix("lm."): v.clone() for k, v in root.state_dict().items()}
    ts.close()
    return Path(cfg.run.run_dir), ts, root, weights


def _args(run, out, *extra):
    return ["app=pure", f"run_dir={run}", f"out={out}", "ema=false", *extra]


def _exported(out: Path) -> dict:
    from safetensors.torch import load_file

    got = {}
    for f in sorted(out.glob("model-*.safetensors")):
        got.update(load_file(f))
    return got


@pytest.mark.slow  # a second interpreter (torch + hydra start-up), killed mid-export
def test_kill_9_mid_export_leaves_the_old_export_whole(pure_run, tmp_path):
    """Bad case 7: the export process is killed (SIGKILL) after writing two shards of step 2 into a
    folder holding step 1's export; the folder must still be exactly step 1's export."""
    run, *_ = pure_run
    out = tmp_path / "hf"
    export_main(_args(run, out, "step=1"))
    before = _digests(out)
    assert sum(n.startswith("model-") for n in before) >= 3  # several shards: a mix would be possible
    code = textwrap.dedent(f"""
        import os, signal
        import pure.official as po
        real, n = po.save_safetensors_atomic, []
        def dying(*a, **k):
            real(*a, **k)
            n.append(1)
            if len(n) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        po.save_safetensors_atomic = dying
        from launch.export_checkpoint import main
        main({_args(run, out, "step=2", "overwrite=true")!r})
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == -9
    assert _digests(out) == before  # not one shard of step 2 under step 1's index
    res = export_main(_args(run, out, "step=2", "overwrite=true"))  # the next export cleans up and succeeds
    assert res["checkpoint"].endswith("step_00000002")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")) == []  # no temp, no lock left
    got, want = _exported(out), pure_run[3][2]
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("existing", ["other_model_folder", "file"])
def test_existing_output_is_refused_without_overwrite(pure_run, tmp_path, capsys, existing):
    run, *_ = pure_run
    if existing == "file":
        out = tmp_path / "VARSR.pth"
        out.write_bytes(b"someone else's weights")
        keep = {out.name: out.read_bytes()}
    else:  # another model's HF folder: its shards must survive (the old writer deleted unlisted shards)
        out = tmp_path / "official"
        out.mkdir()
        for name in ("model-00001-of-00003.safetensors", "model.safetensors.index.json", "tokenizer.json"):
            (out / name).write_bytes(name.encode())
        keep = {p.name: p.read_bytes() for p in out.iterdir()}
    line = user_error(capsys, export_main, _args(run, out))
    assert f"out={out} already exists" in line and "overwrite=true" in line
    now = {out.name: out.read_bytes()} if out.is_file() else {p.name: p.read_bytes() for p in out.iterdir()}
    assert now == keep


def test_export_racing_a_pruning_trainer_takes_the_newest_finished_step(pure_run, tmp_path, monkeypatch, caplog):
    """The export picks step 2; while it reads, the trainer saves steps 3 and 4 and prunes 2 (keep=2).
    The export must take step 4, not fail with "save did not finish"."""
    import launch.export_checkpoint as ex

    run, ts, root, _ = pure_run
    real, calls = ex.load_model_only, []

    def racing(path, *a, **k):
        if not calls:
            for step in (3, 4):
                with torch.no_grad():
                    for p in root.parameters():
                        p.add_(0.01)
                ts.save(step, extra=dict(ts_extra))
        calls.append(Path(path).name)
        return real(path, *a, **k)

    ts_extra = {"config": json.loads((step_dir(run, 2) / "meta.json").read_text())["extra"]["config"]}
    monkeypatch.setattr(ex, "load_model_only", racing)
    with caplog.at_level("WARNING"):
        res = export_main(_args(run, tmp_path / "hf"))
    want = {k.removeprefix("lm."): v for k, v in root.state_dict().items()}
    assert calls[0] == "step_00000002" and res["checkpoint"].endswith("step_00000004"), calls
    assert "pruned by the training run" in caplog.text
    got = _exported(tmp_path / "hf")
    assert all(torch.equal(got[k], want[k]) for k in got) and set(got) == set(want)


def test_explicit_step_pruned_during_export_is_one_line(pure_run, tmp_path, monkeypatch, capsys):
    import launch.export_checkpoint as ex
    from common.train_state import _remove_step

    run, *_ = pure_run
    real = ex.load_model_only

    def pruned(path, *a, **k):
        _remove_step(Path(path))  # the trainer's own pruning, mid-read
        return real(path, *a, **k)

    monkeypatch.setattr(ex, "load_model_only", pruned)
    line = user_error(capsys, export_main, _args(run, tmp_path / "hf", "step=1"))
    assert "step_00000001: pruned by the training run while being read" in line
    assert not (tmp_path / "hf").exists()


def test_disk_full_during_export_is_one_line_and_keeps_the_old_export(pure_run, tmp_path, monkeypatch, capsys):
    import common.checkpoint as ck

    run, *_ = pure_run
    out = tmp_path / "hf"
    export_main(_args(run, out, "step=1"))
    before = _digests(out)
    real_mkstemp = ck.tempfile.mkstemp
    monkeypatch.setattr(ck.tempfile, "mkstemp", lambda **kw: (os.open("/dev/full", os.O_WRONLY), real_mkstemp(**kw)[1]))
    line = user_error(capsys, export_main, _args(run, out, "step=2", "overwrite=true"))
    assert "disk full while writing the export hf" in line
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")) == []


def test_export_of_the_other_apps_run_names_it(pure_run, tmp_path, capsys):
    run, *_ = pure_run
    line = user_error(capsys, export_main, ["app=varsr", f"run_dir={run}", f"out={tmp_path / 'VARSR.pth'}"])
    assert f"run_dir={run} belongs to pure, not varsr: set app=pure" in line
    assert not (tmp_path / "VARSR.pth").exists()
