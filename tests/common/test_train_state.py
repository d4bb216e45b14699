"""common.train_state on one process: layout, exact round trip, async save, fallback past bad/planted
checkpoints (the planted payload must never run), orphan cleanup, model-only (export) loads."""

import json
import pickle
import random

import numpy as np
import pytest
import torch

from common.checkpoint_dcp import load_sharded, read_metadata
from common.train_state import TrainState, list_steps, resumable, step_dir


class Payload:
    """Unpickling this with plain pickle (or torch.load(weights_only=False)) creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


def plant_torch(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train(model, opt, sched, steps):
    out = []
    for _ in range(steps):
        x = torch.randn(4, 6)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        out.append(float(loss))
    return out


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_matches_uninterrupted(tmp_path, async_save):
    ref = _setup()
    ref_losses = _train(*ref, 6)

    m, o, s = _setup()
    ts = TrainState(tmp_path, m, o, {"scheduler": s}, keep=2, async_save=async_save)
    first = _train(m, o, s, 3)
    ts.save(3, extra={"data": {"consumed": 12}})
    random.random(), np.random.rand(), torch.rand(5)  # move every stream on; resume must rewind them
    ts.wait()
    d = step_dir(tmp_path, 3)
    assert sorted(p.name for p in d.iterdir()) == ["COMPLETE", "meta.json", "rng", "state"]
    assert sorted(p.name for p in (d / "state").iterdir()) == [".metadata", "__0_0.distcp"]
    assert json.loads((d / "meta.json").read_text())["extra"] == {"data": {"consumed": 12}}

    m2, o2, s2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    got = TrainState(tmp_path, m2, o2, {"scheduler": s2}).resume()
    assert got.step == 3 and got.extra["data"]["consumed"] == 12 and got.restore_rng()
    assert s2.last_epoch == 3 and o2.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    assert first + _train(m2, o2, s2, 3) == ref_losses  # bit-identical, data RNG included


def test_keep_prunes_and_resaving_a_step_replaces_it(tmp_path):
    m, o, s = _setup()
    ts = TrainState(tmp_path, m, o, keep=2)
    for step in (1, 2, 3, 3):
        _train(m, o, s, 1)
        ts.save(step)
    assert [n for n, _ in list_steps(tmp_path)] == [2, 3]


def test_orphans_from_a_killed_save_are_removed_at_start(tmp_path):
    m, o, _ = _setup()
    TrainState(tmp_path, m, o).save(1)
    root = tmp_path / "checkpoints"
    (root / ".tmp_step_00000002" / "state").mkdir(parents=True)
    (root / ".tmp_step_00000002" / "state" / "__0_0.distcp").write_bytes(b"half")
    (root / ".meta.json.abc.tmp").write_bytes(b"{")
    TrainState(tmp_path, m, o)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]


def _two_checkpoints(tmp_path):
    m, o, s = _setup()
    ts = TrainState(tmp_path, m, o, {"sink": _Sink()}, keep=0)
    _train(m, o, s, 1)
    ts.save(1)
    good = {k: v.clone() for k, v in m.state_dict().items()}
    _train(m, o, s, 1)
    ts.save(2)
    return good


@pytest.mark.parametrize(
    "damage",
    ["truncated_shard", "truncated_metadata", "no_marker", "planted_metadata", "planted_rng", "planted_shard_bytes"],
)
def test_bad_newest_falls_back_to_previous(tmp_path, caplog, damage):
    good = _two_checkpoints(tmp_path)
    d = step_dir(tmp_path, 2)
    marker = tmp_path / "PWNED"
    if damage == "truncated_shard":
        f = d / "state" / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "truncated_metadata":
        f = d / "state" / ".metadata"
        f.write_bytes(f.read_bytes()[:40])
    elif damage == "no_marker":
        (d / "COMPLETE").unlink()
    elif damage == "planted_metadata":
        f = d / "state" / ".metadata"
        plant_pickle(f, marker)
    elif damage == "planted_rng":
        f = d / "rng" / "rank_00000.pt"
        plant_torch(f, marker)
    else:  # a well-formed checkpoint whose non-tensor entry is a pickled payload
        from common.checkpoint_dcp import save_sharded

        m, o, _ = _setup()
        state = TrainState(tmp_path, m, o, {"sink": _Sink()})._state()
        state["objects"]["sink"]["x"] = Payload(marker)
        save_sharded(state, d / "state")
    m2, o2, _ = _setup(seed=9)
    ts = TrainState(tmp_path, m2, o2, {"sink": _Sink()})
    with caplog.at_level("WARNING"):
        got = ts.resume()
    assert not marker.exists()  # the payload never ran
    assert got is not None and got.step == 1
    assert any(d.name in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    if damage != "planted_shard_bytes":  # verification names the exact bad file
        name = "COMPLETE" if damage == "no_marker" else f.name
        assert any(name in r.getMessage() for r in caplog.records), caplog.text
    for k, v in m2.state_dict().items():
        assert torch.equal(v, good[k]), k


class _Sink:
    def state_dict(self):
        return {"x": 0}

    def load_state_dict(self, sd):
        pass


def test_restricted_metadata_reader_reads_real_metadata_only(tmp_path):
    m, o, _ = _setup()
    TrainState(tmp_path, m, o).save(1)
    md = read_metadata(step_dir(tmp_path, 1) / "state")
    assert any(k.startswith("model.") for k in md.state_dict_metadata)
    plant_pickle(tmp_path / "x" / ".metadata", tmp_path / "PWNED")
    with pytest.raises(pickle.UnpicklingError, match="refusing global io.open"):
        read_metadata(tmp_path / "x")
    assert not (tmp_path / "PWNED").exists()


def test_model_only_load_never_reads_optimizer(tmp_path):
    """The export path: a partial load names model keys only; the optimizer entries stay on disk."""
    m, o, s = _setup()
    _train(m, o, s, 2)
    TrainState(tmp_path, m, o).save(2)
    fresh, _, _ = _setup(seed=5)
    sd = {"model": fresh.state_dict()}
    load_sharded(sd, step_dir(tmp_path, 2) / "state", partial=True)
    assert list(sd) == ["model"]
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_no_checkpoint_resumes_nothing(tmp_path):
    m, o, _ = _setup()
    assert TrainState(tmp_path, m, o).resume() is None and resumable(tmp_path) == []
