"""PURE gradient accumulation, before clipping, on every backend that runs on CPU (none, FSDP2, DeepSpeed).

For one optimizer step over two records of equal length (so the mean of micro-batch means equals the
batch mean), (micro-batch 2, accum 1) and (micro-batch 1, accum 2) must give the same gradient, and it
must equal an independent reference: the mean of the two records' gradients, each from plain autograd
on a copy of the initial model. Gradients are read before clipping (a spy on ``clip_grad_norm_``; for
DeepSpeed, which clips inside its engine, its pre-clip global norm): clipping to ``grad_clip`` would
hide a loss not divided by the number of micro-batches, and Adam's scale invariance hides it from any
loss curve. Dropout is 0 here only because its masks depend on the micro-batch shape.

The file doubles as the worker (``__main__``): one process with a world of 1 (torchrun's variables
set by hand, so FSDP2 and DeepSpeed really wrap the model) runs every backend and config.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFIGS = ((2, 1), (1, 2))  # (micro-batch, accumulation steps)
BACKENDS = ("none", "fsdp2", "deepspeed")


def _full(t):
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float().clone()


def first_step(tmp: Path, backend: str, mb: int, accum: int) -> dict:
    """{"norm": pre-clip global grad norm, "grads": {name: pre-clip grad} (not DeepSpeed), "ref": ...}."""
    from pure.data import TokenShardDataset, merge_indices, write_shard
    from pure.losses import PureLoss
    from pure.train import Trainer
    from tests.pure.test_train import make_cfg, make_records

    data = tmp / "data"
    if not (data / "record.json").exists():
        write_shard(data / "shard_0", make_records(6, seed=1, lo=30, hi=31))  # all 30 tokens, same mask
        merge_indices(data)
    over = {"parallel.backend": backend, "data.batch_size": mb, "optim.grad_accum": accum}
    over.update({"run.run_dir": str(tmp / f"run_{backend}_{mb}_{accum}"), "schedule.max_steps": 1})
    over.update({"parallel.zero_stage": 2})
    trainer = Trainer(make_cfg(tmp, **over))
    out = {}
    if backend == "none":  # the reference: mean of each record's own gradient, plain autograd
        lm = copy.deepcopy(trainer.lm)
        ds = TokenShardDataset(trainer.cfg.data.meta, trainer.cfg.data.max_seq_len)
        loss_fn = PureLoss(lm, trainer.cfg.loss.z_loss_weight)
        batch = trainer.sampler.global_batches(0)[0]
        for i in batch:
            tok, lab = ds[i]
            loss, _ = loss_fn(torch.tensor([tok]), torch.tensor([lab]))
            (loss / len(batch)).backward()
        out["ref"] = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    names = {id(p): n for n, p in trainer.lm.named_parameters()}
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        out["grads"] = {names[id(p)]: _full(p.grad) for p in params if id(p) in names}
        return real(params, max_norm, *a, **k)

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        values = trainer.train_step()["values"]
    finally:
        torch.nn.utils.clip_grad_norm_ = real
    out["norm"] = float(values[-1])
    return out


def _main(tmp: Path) -> None:
    torch.set_num_threads(1)
    res = {}
    for backend in BACKENDS:
        for mb, accum in CONFIGS:
            r = first_step(tmp, backend, mb, accum)
            res[f"{backend}_{mb}_{accum}"] = r
    torch.save(res, tmp / "grads.pt")
    print(json.dumps({k: v["norm"] for k, v in res.items()}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # one process, three backends (DeepSpeed's import dominates)
def test_accumulated_gradient_equals_big_batch_before_clipping(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(root))
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    r = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600, cwd=root
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = torch.load(tmp_path / "grads.pt", weights_only=True)
    ref = res["none_2_1"]["ref"]
    ref_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref.values()])))
    assert ref_norm > 0.1
    for key, r in res.items():
        assert abs(r["norm"] - ref_norm) <= 1e-4 * ref_norm, (key, r["norm"], ref_norm)
        if "grads" in r:  # DeepSpeed keeps its gradients in its own partitions: the norm above covers it
            assert set(r["grads"]) == set(ref), key
            for name, g in ref.items():
                torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-7, msg=f"{key} {name}")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
