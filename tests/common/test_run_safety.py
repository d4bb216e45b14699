"""Issue 16 (training side) on the checkpoint manager alone: run-dir lock, shard checksums, no NaN saves,
a full disk, a changed model or another app's run dir, pruning seen by a concurrent reader."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from common import run_lock
from common.checkpoint_dcp import read_metadata
from common.integrity import NonFiniteError
from common.train_state import CheckpointMismatch, TrainState, list_steps, load_model_only, resumable, step_dir
from tests.common.test_train_state import _setup, _train

ROOT = Path(__file__).resolve().parents[2]


def _holder(lock_dir: Path) -> subprocess.Popen:
    """Another process that holds ``lock_dir``'s run lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from common.run_lock import LOCK_NAME, acquire  # what lock_run_dir does on rank 0 (no torch import)
        acquire({str(lock_dir)!r} + "/" + LOCK_NAME, "training")
        print("locked", flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_run_dir_lock_refuses_a_second_run_and_frees_on_exit_or_kill(tmp_path):
    """Bad case 5 at the manager: a second TrainState on a live run's dir is refused before it touches
    anything (not even the first run's save in progress); the lock goes with a normal exit, and a
    kill -9 leaves a stale lock that the next run takes over (same host, pid gone)."""
    run = tmp_path / "run"
    holder = _holder(run)
    in_flight = run / "checkpoints" / ".tmp_step_00000005"  # the live run's save in progress
    in_flight.mkdir(parents=True)
    m, o, _ = _setup()
    with pytest.raises(run_lock.LockedError, match=rf"in use by training \(pid {holder.pid} on {socket.gethostname()}"):
        TrainState(run, m, o)
    assert in_flight.is_dir()  # the refused run deleted nothing
    holder.communicate("")  # normal exit releases the lock
    assert not (run / run_lock.LOCK_NAME).exists()
    TrainState(run, m, o).close()

    holder = _holder(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((run / run_lock.LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by kill -9
    ts = TrainState(run, m, o)  # stale (pid gone on this host): taken over
    assert json.loads((run / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    ts.close()
    assert not (run / run_lock.LOCK_NAME).exists()


def test_lock_of_another_host_or_recycled_pid(tmp_path):
    lock = tmp_path / run_lock.LOCK_NAME
    # another host: cannot be checked from here, so it is refused, naming host and file
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "node-17", "what": "training", "time": 0}))
    with pytest.raises(run_lock.LockedError, match=f"pid {os.getpid()} on node-17.*delete {lock}"):
        run_lock.acquire(lock, "export")
    # this host, a live pid that started at another time (recycled): stale
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "1", "time": 0}))
    run_lock.acquire(lock, "export")
    assert json.loads(lock.read_text())["what"] == "export"
    run_lock.release(lock)
    assert not lock.exists()


def test_lock_of_a_zombie_is_stale(tmp_path):
    """A kill -9'd rank whose parent died too stays a zombie where PID 1 does not reap (containers without
    an init): it holds nothing and never releases, so its lock is stale, not "in use"."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once; not reaped until wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lock = tmp_path / run_lock.LOCK_NAME
    start = run_lock._start_time(child.pid)
    lock.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "start": start, "time": 0}))
    run_lock.acquire(lock, "training")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    run_lock.release(lock)
    child.wait()


def _two_saves(run, keep=0):
    m, o, s = _setup()
    ts = TrainState(run, m, o, keep=keep, app="varsr")
    _train(m, o, s, 1)
    ts.save(1)
    good = {k: v.clone() for k, v in m.state_dict().items()}
    _train(m, o, s, 1)
    ts.save(2)
    return good, (m, o, s, ts)


def test_silently_corrupted_shard_falls_back_and_is_never_exported(tmp_path, caplog):
    """Bad case 6: 64 bytes inside the data of the newest step's 64 x 64 weight overwritten in place (size
    unchanged; torch's own record checks miss it at this size, so it used to load without a word): resume
    and the export reader both reject it by checksum, naming the file, and use step 1."""

    def setup(seed):
        torch.manual_seed(seed)
        m = torch.nn.Sequential(torch.nn.Linear(64, 64))
        return m, torch.optim.AdamW(m.parameters())

    m, o = setup(0)
    ts = TrainState(tmp_path, m, o, keep=0, app="varsr")
    ts.save(1)
    good = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m[0].weight.add_(1)
    ts.save(2)
    shard = step_dir(tmp_path, 2) / "state" / "__0_0.distcp"
    size = shard.stat().st_size
    md = read_metadata(shard.parent)  # where the bytes of model.0.weight lie in the shard
    where = next(v for k, v in md.storage_data.items() if k.fqn == "model.0.weight")
    with open(shard, "r+b") as f:
        f.seek(where.offset + where.length // 2)
        f.write(os.urandom(64))
    assert shard.stat().st_size == size
    m2, o2 = setup(7)
    with caplog.at_level("WARNING"):
        got = TrainState(tmp_path, m2, o2, app="varsr").resume()
    assert got.step == 1
    assert any("__0_0.distcp: sha256 mismatch" in r.getMessage() for r in caplog.records), caplog.text
    for k, v in m2.state_dict().items():
        assert torch.equal(v, good[k]), k
    with pytest.raises(ValueError, match="__0_0.distcp: sha256 mismatch"):
        load_model_only(step_dir(tmp_path, 2), setup(0)[0].state_dict())
    assert [p.name for p, _ in resumable(tmp_path)] == ["step_00000001"]


def test_nan_weights_never_become_a_checkpoint_or_prune_a_good_one(tmp_path):
    m, o, s = _setup()
    ts = TrainState(tmp_path, m, o, keep=1)
    _train(m, o, s, 1)
    ts.save(1)
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="step 2: the weights hold NaN"):
        ts.save(2)
    assert [n for n, _ in list_steps(tmp_path)] == [1] and resumable(tmp_path)  # step 1 kept, still good
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())


def _full_stream(real):
    """DCP's file stream, but .distcp shards go to /dev/full: the kernel's own ENOSPC on write."""
    from contextlib import contextmanager

    @contextmanager
    def create_stream(self, path, mode):
        if str(path).endswith(".distcp"):
            with open("/dev/full", "wb") as f:
                yield f
        else:
            with real(self, path, mode) as f:
                yield f

    return create_stream


@pytest.mark.parametrize("where", ["shard", "rng", "async_shard"])
def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, where):
    from torch.distributed.checkpoint.filesystem import FileSystem

    import common.checkpoint as ck

    m, o, s = _setup()
    ts = TrainState(tmp_path, m, o, keep=1, async_save=where == "async_shard")
    _train(m, o, s, 1)
    ts.save(1)
    ts.wait()
    if where == "rng":
        real_mkstemp = ck.tempfile.mkstemp
        monkeypatch.setattr(
            ck.tempfile, "mkstemp", lambda **kw: (os.open("/dev/full", os.O_WRONLY), real_mkstemp(**kw)[1])
        )
    else:
        monkeypatch.setattr(FileSystem, "create_stream", _full_stream(FileSystem.create_stream))
    _train(m, o, s, 1)
    with pytest.raises(OSError) as e:
        ts.save(2)
        ts.wait()
    monkeypatch.undo()
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and "disk full while writing checkpoint step 2" in msg, msg
    assert "\n" not in msg and "previous" not in msg or "intact" in msg
    assert [n for n, _ in list_steps(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]  # temp removed
    assert TrainState(tmp_path, *_setup(seed=3)[:2]).resume().step == 1


@pytest.mark.parametrize("change", ["width", "extra_layer", "other_app", "new_ema"])
def test_resume_with_another_model_or_app_names_the_cause(tmp_path, change):
    """Not "every checkpoint is bad": the tensors whose shapes differ, or whose run dir it is."""
    _two_saves(tmp_path)
    if change == "other_app":
        m, o, _ = _setup()
        with pytest.raises(CheckpointMismatch, match="this run dir belongs to varsr .* not pure"):
            TrainState(tmp_path, m, o, app="pure").resume()
        return
    if change == "new_ema":  # ema.enabled=true on a run saved without an average
        from common.ema import EMA

        m, o, _ = _setup()
        with pytest.raises(CheckpointMismatch, match=r"no saved state for ema \(was it switched on since\?\)"):
            TrainState(tmp_path, m, o, {"ema": EMA(m, 0.9, 0)}, app="varsr").resume()
        return
    torch.manual_seed(0)
    if change == "width":
        m = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
        want = r"shapes differ: 0.bias \[8\] in the checkpoint vs \[16\] now; 0.weight \[8, 6\] .* vs \[16, 6\]"
    else:
        m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 3))
        want = r"2 tensor\(s\) only in this model: 3.bias, 3.weight"
    o = torch.optim.AdamW(m.parameters())
    with pytest.raises(CheckpointMismatch, match=want):
        TrainState(tmp_path, m, o, app="varsr").resume()
    assert [n for n, _ in list_steps(tmp_path)] == [1, 2]  # nothing declared bad, nothing moved


def test_a_reader_never_sees_a_half_pruned_step(tmp_path, caplog):
    """Pruning renames a step out of ``step_<n>`` before deleting it: a concurrent reader (an export)
    finds each step whole or not at all, never "COMPLETE missing (save did not finish)"."""
    import common.train_state as tsm

    _, (m, o, s, ts) = _two_saves(tmp_path, keep=2)
    seen, real_rmtree = [], tsm.shutil.rmtree

    def watching_rmtree(path, *a, **k):  # step 1's first file is gone: what does a reader see now?
        if Path(path, "COMPLETE").is_file():
            Path(path, "COMPLETE").unlink()
            seen.append([p.name for p, _ in resumable(tmp_path)])
        return real_rmtree(path, *a, **k)

    _train(m, o, s, 1)
    with caplog.at_level("WARNING"):
        tsm.shutil.rmtree = watching_rmtree
        try:
            ts.save(3)
        finally:
            tsm.shutil.rmtree = real_rmtree
    assert seen == [["step_00000003", "step_00000002"]]
    assert "save did not finish" not in caplog.text and "skipping" not in caplog.text
    assert [n for n, _ in list_steps(tmp_path)] == [2, 3]


def test_folder_tool_refuses_an_out_dir_in_use_and_frees_it_when_done(tmp_path, capsys):
    """Two folder runs into one out_dir at once would interleave outputs: the second is one line (exit 2)."""
    from tests.folder_cases import load_launcher, make_folder, user_error

    degrade = load_launcher("degrade").main
    hr = make_folder(tmp_path / "HR", {"a": (40, 40)})
    for p in hr.iterdir():
        if p.stem != "a":
            p.unlink()
    out = tmp_path / "LQ"
    holder = _holder(out)
    args = [f"hr_dir={hr}", f"out_dir={out}", "degradation=varsr_mild", "device=cpu", "min_size=16"]
    try:
        line = user_error(capsys, degrade, args)
    finally:
        holder.communicate("")
    assert f"{out} is in use by training (pid {holder.pid}" in line
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, the holder's lock gone with it
    assert degrade(args)["written"] == 1
    assert not (out / run_lock.LOCK_NAME).exists()  # released when the folder run finished
