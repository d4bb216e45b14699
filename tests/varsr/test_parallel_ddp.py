"""2-process DDP (gloo, torchrun) == 1 process with the same global batch, on the tiny VARSR config.

The 2 ranks run micro-batch 1 with 2 accumulation steps, the single process micro-batch 4: the same
global batch, so accumulation (no all-reduce on the first micro-batch, the loss divided by the number
of micro-batches) is checked under DDP and FSDP2 too.
The file doubles as the torchrun worker script (``__main__``). Compared: the first step's
(all-reduced) gradients before clipping (clipping would hide a loss scaled by a constant factor),
the mean losses of every step, and the parameters after
``STEPS`` optimizer steps; the global batch sequence is identical by construction of
``ResumableBatchSampler``. AdamW's eps is raised to 1e-4 for this test only: with the default 1e-8
a parameter whose true gradient is ~0 turns all-reduce rounding noise (~1e-9) into an lr-sized
step of random sign, which says nothing about DDP. The refiner weight is 0 because its timestep/noise draws
depend on the local batch shape, and the LR is the deterministic bicubic one.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varsr.config import tiny_train_config
from varsr.optim import clean_param_name
from varsr.train import Trainer

GLOBAL_BATCH = 4
STEPS = 3


def make_cfg(run_dir, world: int, backend: str = "ddp", accum: int = 1):
    cfg = tiny_train_config(str(run_dir))
    cfg.data.batch_size, cfg.optim.grad_accum = GLOBAL_BATCH // world // accum, accum
    cfg.optim.lr /= accum  # VARSR's official rule multiplies it back (lr_scaling=accum): one effective lr for both
    cfg.loss.diff_weight = 0.0
    cfg.schedule.max_steps = STEPS
    cfg.optim.eps = 1e-4
    cfg.parallel.backend = backend
    cfg.parallel.param_dtype = "fp32"
    cfg.ema.enabled, cfg.ema.decay = True, 0.5  # under FSDP2 each rank averages its own shards
    return cfg


def run_and_dump(run_dir, world: int, backend: str = "ddp", accum: int = 1) -> Path:
    """Train STEPS steps; rank 0 writes step 1's full pre-clip gradients, every step's rank-mean loss,
    final params."""
    from common.dist import all_reduce_mean, get_rank

    out = {"losses": []}

    def full(t):
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()

    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):  # every rank calls it (full() gathers FSDP2 shards)
        params = list(params)
        if "grads" not in out:
            out["grads"] = {names[id(p)]: full(p.grad) for p in params if p.grad is not None}
        return real_clip(params, max_norm, *a, **k)

    def grab(trainer, metrics):
        out["losses"].append(all_reduce_mean(torch.tensor([metrics["loss"]])))
        if trainer.step == STEPS:
            out["params"] = {clean_param_name(n): full(p) for n, p in trainer.model.named_parameters()}
            out["ema"] = {n: full(t) for n, t in trainer.ema.shadow.items()}

    trainer = Trainer(make_cfg(run_dir, world, backend, accum))
    names = {id(p): clean_param_name(n) for n, p in trainer.model.named_parameters()}
    torch.nn.utils.clip_grad_norm_ = spy
    try:
        trainer.fit(callback=grab)
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    path = Path(run_dir) / "step1.pt"
    if get_rank() == 0:
        torch.save(out, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp2"])
def test_two_process_matches_single_process(tmp_path, backend):
    ref = torch.load(run_and_dump(tmp_path / "single", 1), weights_only=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        __file__,
        str(tmp_path / "ddp"),
        backend,
        "2",  # micro-batch 1 x 2 accumulation steps per rank
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "ddp" / "step1.pt", weights_only=True)
    assert len(ref["losses"]) == STEPS
    assert torch.allclose(torch.cat(got["losses"]), torch.cat(ref["losses"]), rtol=1e-5)
    assert set(got["grads"]) == set(ref["grads"]) and len(ref["grads"]) > 10
    for name, g in ref["grads"].items():
        assert torch.allclose(got["grads"][name], g, atol=1e-7, rtol=1e-4), name
    assert set(got["params"]) == set(ref["params"])
    for name, p in ref["params"].items():
        assert torch.allclose(got["params"][name], p, atol=2e-6, rtol=1e-5), name
    assert set(got["ema"]) == set(ref["ema"]) and len(ref["ema"]) > 10
    for name, e in ref["ema"].items():
        assert torch.allclose(got["ema"][name], e, atol=2e-6, rtol=1e-5), name
    assert any(not torch.allclose(e, ref["params"][n]) for n, e in ref["ema"].items())  # a real average
    _resume_one_process_past_planted(tmp_path, backend, got["params"])


def _resume_one_process_past_planted(tmp_path, backend, params):
    """The 2-rank run's sharded checkpoint (one DCP shard file per rank) resumes in ONE process, past a
    planted newest checkpoint whose index runs code when unpickled: the payload never runs and the
    weights are the 2-rank run's final ones."""
    import shutil

    from common.train_state import step_dir
    from tests.common.test_train_state import plant_pickle

    run = tmp_path / "ddp"
    good = step_dir(run, STEPS)
    assert sorted(p.name for p in (good / "state").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    shutil.copytree(good, step_dir(run, STEPS + 5))
    marker = tmp_path / "PWNED"
    plant_pickle(step_dir(run, STEPS + 5) / "state" / ".metadata", marker)
    trainer = Trainer(make_cfg(run, 1, backend))
    assert not marker.exists() and trainer.step == STEPS
    got = {clean_param_name(n): p.detach() for n, p in trainer.model.named_parameters()}
    assert set(got) == set(params)
    for name, p in params.items():
        assert torch.equal(got[name], p), name


if __name__ == "__main__":
    run_and_dump(sys.argv[1], int(os.environ["WORLD_SIZE"]), sys.argv[2], int(sys.argv[3]))
    from common.dist import destroy_distributed

    destroy_distributed()
