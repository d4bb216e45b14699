"""`parallel.cpu_offload` in both apps: the switch really installs FSDP2's CPUOffloadPolicy (shards,
gradients and AdamW state in host memory) / DeepSpeed ZeRO-Offload, and a tiny run with it trains
to the same losses as the plain single-process run (the independent reference).

Each run happens in this process as a torchrun world of one (what launch/train_*.py starts for
`cpu_offload` on one device): RANK/WORLD_SIZE set, a gloo group on a file store.
"""

import pytest
import torch
import torch.distributed as tdist

from common.dist import destroy_distributed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world_of_one(tmp_path, monkeypatch):
    """Enter a 1-rank gloo job for the duration of a test (torchrun's variables + a process group)."""

    class World:
        def __enter__(self):
            for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", DS_ACCELERATOR="cpu").items():
                monkeypatch.setenv(k, v)
            store = tdist.FileStore(str(tmp_path / f"store{id(self)}"), 1)
            tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
            return self

        def __exit__(self, *exc):
            destroy_distributed()
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                monkeypatch.delenv(k)

    yield World
    destroy_distributed()


def _offloaded(module) -> bool:
    from torch.distributed.fsdp import CPUOffloadPolicy

    group = module._get_fsdp_state()._fsdp_param_group
    return isinstance(group.offload_policy, CPUOffloadPolicy) and all(
        p._local_tensor.device.type == "cpu" for p in module.parameters(recurse=False)
    )


def test_varsr_fsdp2_offload_matches_plain(tmp_path, world_of_one):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    def cfg(name, **par):
        c = tiny_train_config(str(tmp_path / name))
        c.schedule.max_steps, c.loss.diff_weight = 2, 0.0
        for k, v in par.items():
            setattr(c.parallel, k, v)
        return c

    ref = Trainer(cfg("plain")).fit()["losses"]
    with world_of_one():
        tr = Trainer(cfg("offload", backend="fsdp2", cpu_offload=True, param_dtype="fp32"))
        assert all(_offloaded(b) for b in tr.model.blocks) and _offloaded(tr.model)
        got = tr.fit()["losses"]
        assert tr.optimizer.state and all(s["exp_avg"].device.type == "cpu" for s in tr.optimizer.state.values())
    assert len(got) == len(ref) == 2
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)


def test_varsr_offload_needs_fsdp2(tmp_path):
    from common.dist import DistInfo
    from varsr.config import ParallelConfig
    from varsr.model import build_models
    from varsr.parallelize import parallelize

    model, _ = build_models("tiny")
    with pytest.raises(ValueError, match="backend=fsdp2"):
        parallelize(
            model, ParallelConfig(backend="ddp", cpu_offload=True), DistInfo(0, 1, 0, torch.device("cpu"), None)
        )


def _pure_cfg(tmp_path, name, **over):
    from tests.pure.test_train import make_cfg

    return make_cfg(tmp_path, **{"schedule.max_steps": 3, "run.run_dir": str(tmp_path / name), **over})


@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_pure_offload_matches_plain(tmp_path, world_of_one, backend):
    from pure.train import Trainer

    ref = Trainer(_pure_cfg(tmp_path, "plain")).fit()["losses"]
    over = {"parallel.backend": backend, "parallel.cpu_offload": True, "parallel.zero_stage": 2}
    with world_of_one():
        tr = Trainer(_pure_cfg(tmp_path, backend, **over))
        if backend == "fsdp2":
            lm = tr.lm
            assert all(_offloaded(m) for m in [*lm.model.layers, lm.model.embed_tokens, lm.lm_head])
        else:  # ZeRO-Offload: DeepSpeed's engine reports it and its optimizer keeps fp32 state on the CPU
            assert tr.engine.engine.zero_cpu_offload() and tr.engine.optimizer.cpu_offload
        got = tr.fit()["losses"]
    assert len(got) == len(ref) == 3
    torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=1e-5, atol=1e-6)


def test_deepspeed_config_switch():
    from pure.config import ParallelConfig as PureParallel
    from pure.config import PureOptimConfig
    from pure.parallelize import deepspeed_config

    par = PureParallel(backend="deepspeed", zero_stage=3, cpu_offload=True)
    z = deepspeed_config(PureOptimConfig(), par, micro_batch=2, world_size=1)["zero_optimization"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["stage"] == 3
    assert (
        "offload_optimizer"
        not in deepspeed_config(PureOptimConfig(), PureParallel(backend="deepspeed"), 2, 1)["zero_optimization"]
    )
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(PureOptimConfig(), PureParallel(backend="deepspeed", zero_stage=0, cpu_offload=True), 2, 1)
