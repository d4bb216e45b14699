"""VARSR FSDP2 on 2 gloo ranks with the shipped precision: training and validation (issue 18 rows 1-2).

Shipped: ``precision.dtype=fp16`` autocast, ``parallel.param_dtype=auto`` (= the autocast dtype).
Row 1: the prefix encoder, head and refiner run in fp32 with autocast off, so the FSDP2 root must
keep fp32 parameters while the blocks compute in fp16; before, the first forward died ("Input type
(float) and bias type (BFloat16)"). Row 2: sampling calls the model's helpers (``prefix``,
``logits``, ``diffloss.sample``), not ``forward``, so FSDP2's hooks never gathered the root ("mixed
torch.Tensor and DTensor"). Checked: the dtype each module's weights have when it runs (hooks), the
first step's rank-mean loss against a single fp32 process on the same global batch (independent
reference; fp16 rounding only), and a validation that really samples on both ranks.

The file doubles as the torchrun worker script (``__main__``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varsr.config import ParallelConfig, PrecisionConfig, tiny_train_config

STEPS = 2


def make_cfg(run_dir, world: int, shipped: bool):
    cfg = tiny_train_config(str(run_dir))
    cfg.data.batch_size = 2 // world
    cfg.loss.diff_weight = 0.0  # refiner noise depends on the local batch; its forward still runs
    cfg.schedule.max_steps = STEPS
    if shipped:
        cfg.precision, cfg.parallel = PrecisionConfig(), ParallelConfig(backend="fsdp2")
        assert (cfg.precision.dtype, cfg.parallel.param_dtype) == ("fp16", "auto")
        cfg.validation.every_steps = STEPS
    return cfg


def worker(run_dir: str) -> None:
    from common.dist import all_reduce_mean, destroy_distributed, get_rank
    from varsr.train import Trainer

    trainer = Trainer(make_cfg(run_dir, int(os.environ["WORLD_SIZE"]), shipped=True))
    core = trainer.model
    seen: dict[str, set] = {}

    def spy(name, weight):
        def hook(module, args):
            seen.setdefault(name, set()).add(str(getattr(module, weight).dtype))

        return hook

    for name, mod, weight in (
        ("con_embedding", core.con_embedding.conv_in, "weight"),
        ("head", core.head, "weight"),
        ("refiner", core.diffloss.net.input_proj, "weight"),
        ("block", core.blocks[0].attn.proj, "weight"),
    ):
        mod.register_forward_pre_hook(spy(name, weight))
    losses = []
    result = trainer.fit(callback=lambda tr, m: losses.append(float(all_reduce_mean(m["loss"].reshape(1)))))
    val = sorted(p.name for p in (Path(run_dir) / "val").glob("*.png")) if get_rank() == 0 else []
    if get_rank() == 0:
        out = {"losses": losses, "dtypes": {k: sorted(v) for k, v in seen.items()}, "val": val, "step": result["step"]}
        (Path(run_dir) / "result.json").write_text(json.dumps(out))
    destroy_distributed()


@pytest.mark.slow
def test_fsdp2_shipped_dtype_trains_and_validates(tmp_path):
    from varsr.train import Trainer

    torch.set_num_threads(1)
    ref = Trainer(make_cfg(tmp_path / "ref", 1, shipped=False)).fit()["losses"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run = tmp_path / "fsdp2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__, str(run)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads((run / "result.json").read_text())
    assert got["step"] == STEPS and got["val"] == [f"step_{STEPS:08d}.png"]
    # fp32 islands stay fp32; the blocks compute in the autocast dtype (training and sampling alike)
    assert got["dtypes"] == {
        "con_embedding": ["torch.float32"],
        "head": ["torch.float32"],
        "refiner": ["torch.float32"],
        "block": ["torch.float16"],
    }
    assert got["losses"][0] == pytest.approx(ref[0], rel=1e-2)  # same weights and batch, fp16 rounding only


@pytest.mark.parametrize(
    "param,amp,want",
    [
        ("auto", "fp16", "fp16"),
        ("auto", "bf16", "bf16"),
        ("auto", "fp32", "fp32"),
        ("bf16", "fp32", "bf16"),
        ("fp32", "fp16", "fp32"),
        ("fp16", "fp16", "fp16"),
    ],
)
def test_param_dtype_follows_autocast(param, amp, want):
    from varsr.config import fsdp_param_dtype

    assert fsdp_param_dtype(param, amp) == want


def test_fp16_params_under_bf16_autocast_refused_at_start(tmp_path):
    """The two low-precision types cannot meet under autocast: one line at start-up, not a crash at step 1."""
    from varsr.config import check_train_config

    cfg = make_cfg(tmp_path, 1, shipped=True)
    cfg.parallel.param_dtype = "bf16"  # under the shipped fp16 autocast
    with pytest.raises(ValueError, match="param_dtype=bf16 cannot run under precision.dtype=fp16"):
        check_train_config(cfg)


if __name__ == "__main__":
    worker(sys.argv[1])
