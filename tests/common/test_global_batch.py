"""Row 15 / "What to build" 6 of issue 18: the global batch is what the config states, whatever the
world size, and the LR follows each app's official rule.

Official references, written out here: VARSR `torchrun --nproc-per-node=8 train.py --batch_size=4
--tblr=5e-5`, global 32, and `tlr = ac * tblr` (utils/arg_util.py); PURE 4 nodes x 8 GPUs x 4 =
128 at lr 4e-4, the lr used as given (xllmx). Worlds of 1, 2 and 8 ranks are faked with torch's
fake process group (no communication) so the real trainers build on them.
"""

import os

import pytest
import torch.distributed as dist

from common.batch_plan import plan_batch, split_global_batch
from common.dist import destroy_distributed
from common.paths import UserError


def official_varsr_lr(tblr, ac):
    return ac * tblr  # utils/arg_util.py: args.tlr = args.ac * args.tblr


@pytest.mark.parametrize(
    "world,micro,accum",
    [(1, 4, 8), (2, 4, 4), (8, 4, 1), (16, 2, 1), (32, 1, 1)],
)
def test_varsr_recipe_on_any_world(world, micro, accum):
    plan = plan_batch(32, 4, 1, world, 5e-5, "accum")
    assert (plan.micro_batch, plan.accum) == (micro, accum)
    assert plan.micro_batch * plan.accum * world == plan.global_batch == 32
    assert plan.lr == pytest.approx(official_varsr_lr(5e-5, accum))


@pytest.mark.parametrize("world,accum", [(1, 32), (2, 16), (8, 4), (32, 1)])
def test_pure_recipe_on_any_world(world, accum):
    plan = plan_batch(128, 4, 1, world, 4e-4, "none")
    assert (plan.micro_batch, plan.accum, plan.global_batch) == (4, accum, 128)
    assert plan.lr == 4e-4


def test_uneven_splits():
    assert split_global_batch(24, 5, 1, 2) == (4, 3)  # 12 per rank: largest micro-batch <= 5 dividing it
    assert split_global_batch(32, 16, 2, 1) == (16, 2)  # the accumulation the user insists on
    assert split_global_batch(14, 4, 1, 2) == (1, 7)  # 7 per rank is prime: micro-batch 1
    with pytest.raises(UserError, match=r"optim.global_batch=32 cannot be split over 3 ranks"):
        split_global_batch(32, 4, 1, 3)
    with pytest.raises(UserError, match="optim.grad_accum=2 does not fit"):
        split_global_batch(32, 4, 2, 1)  # 32 per rank / 2 = 16 > data.batch_size 4


def test_without_global_batch_the_old_product():
    plan = plan_batch(0, 4, 2, 8, 5e-5, "accum")
    assert (plan.micro_batch, plan.accum, plan.global_batch) == (4, 2, 64)
    assert plan.lr == pytest.approx(official_varsr_lr(5e-5, 2))


def test_shipped_experiments_state_the_official_batch():
    from common.config import compose_config, validate
    from pure.config import PureTrainConfig
    from pure.config import register_configs as pure_configs
    from varsr.config import VARSRTrainConfig
    from varsr.config import register_configs as varsr_configs

    varsr_configs()
    v = validate(VARSRTrainConfig, compose_config("varsr", "train", ["+exp=lsdir_ffhq"]))
    assert (v.optim.global_batch, v.data.batch_size, v.optim.lr, v.optim.lr_scaling) == (32, 4, 5e-5, "accum")
    pure_configs()
    p = validate(PureTrainConfig, compose_config("pure", "train", ["+exp=lsdir_ffhq"]))
    assert (p.optim.global_batch, p.data.batch_size, p.optim.lr, p.optim.lr_scaling) == (128, 4, 4e-4, "none")


@pytest.fixture
def fake_world(monkeypatch):
    """This process as rank 0 of a ``world``-rank job (torch's fake process group: no peers needed)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def make(world):
        for k, v in {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(k, v)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)

    yield make
    destroy_distributed()
    os.environ.pop("RANK", None)


@pytest.mark.parametrize("world", [1, 2, 8])
def test_varsr_trainer_on_faked_worlds(tmp_path, fake_world, capsys, world):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    fake_world(world)
    cfg = tiny_train_config(str(tmp_path))
    cfg.data.batch_size, cfg.optim.global_batch, cfg.optim.lr = 4, 32, 5e-5
    capsys.readouterr()
    t = Trainer(cfg)
    accum = 32 // (4 * world)
    assert t.world == world and t.accum == accum and (t.sampler.b, t.sampler.world) == (4, world)
    assert t.cfg.data.batch_size * t.accum * world == 32
    assert t.optimizer.param_groups[0]["initial_lr"] == pytest.approx(official_varsr_lr(5e-5, accum))
    first = capsys.readouterr().out.splitlines()[0]  # the run's first log line
    assert first.endswith(
        f"varsr.train] global batch 32 = micro-batch 4 x accumulation {accum} x {world} rank(s); "
        f"lr {official_varsr_lr(5e-5, accum):g} (optim.lr 5e-05 x accumulation {accum}, lr_scaling=accum)"
    )
    assert cfg.data.batch_size == 4 and cfg.optim.grad_accum == 1  # the caller's config is not changed
    t.tracker.finish()


def test_varsr_refuses_a_world_that_does_not_divide(tmp_path, fake_world):
    from varsr.config import tiny_train_config
    from varsr.train import Trainer

    fake_world(3)
    cfg = tiny_train_config(str(tmp_path))
    cfg.optim.global_batch = 32
    with pytest.raises(UserError, match="cannot be split over 3 ranks"):
        Trainer(cfg)


def test_pure_trainer_derives_accumulation(tmp_path, capsys):
    from pure.parallelize import deepspeed_config
    from pure.train import Trainer
    from tests.pure.test_train import make_cfg

    cfg = make_cfg(tmp_path, **{"optim.global_batch": 4, "schedule.max_steps": 1})  # micro-batch <= 2
    capsys.readouterr()
    t = Trainer(cfg)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(
        "pure.train] global batch 4 = micro-batch 2 x accumulation 2 x 1 rank(s); lr 0.003 (optim.lr, lr_scaling=none)"
    )
    assert (t.cfg.data.batch_size, t.cfg.optim.grad_accum, t.sampler.global_batch) == (2, 2, 4)
    t.fit()
    assert t.engine.optimizer.param_groups[0]["lr"] == 3e-3  # as given: no scaling by accumulation
    # the DeepSpeed engine gets the same split on the official 8-GPU node: 4 x 4 x 8 = 128
    big = make_cfg(tmp_path, **{"optim.global_batch": 128, "data.batch_size": 4})
    from common.batch_plan import apply_batch_plan

    derived, _ = apply_batch_plan(big, 8)
    ds = deepspeed_config(derived.optim, derived.parallel, derived.data.batch_size, 8)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        4,
        128,
    )
