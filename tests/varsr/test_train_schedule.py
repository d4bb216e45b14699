"""Optimizer pieces of VARSR training against the official recipe's closed forms.

Schedule: VARSR utils/lr_control.py ``lin0`` (warm-up from 0.005·peak, flat for 30 % of the rest,
linear to 0.01·peak at the last iteration). Groups: official no-decay rule (1-D, bias, key list).
"""

import math

import pytest
import torch

from varsr.model import build_models, model_config
from varsr.optim import (
    NO_DECAY_KEYS,
    LinearSchedule,
    build_optimizer,
    build_scheduler,
    clean_param_name,
    param_groups,
    warmup_steps_for,
)
from varsr.parallelize import _blocks, apply_activation_checkpointing


def test_schedule_key_iterations_match_closed_form():
    total, steps_per_epoch = 1000, 200
    w = warmup_steps_for(0.1, steps_per_epoch, total)
    assert w == 20  # round(0.1 epoch * 200 it/epoch)
    s = LinearSchedule(total, w, 0.005, 0.3, 0.01)
    assert s(0) == pytest.approx(0.005)
    assert s(10) == pytest.approx(0.005 + 0.995 * 10 / 20)
    assert s(20) == pytest.approx(1.0)  # warm-up ends at the peak
    span = total - 1 - w  # 979 post-warm-up intervals
    flat_end = w + 0.3 * span  # 313.7: still 1.0 at 313, decaying from 314
    assert s(313) == 1.0
    p = (314 - w) / span
    assert s(314) == pytest.approx(0.01 + 0.99 * (1 - p) / 0.7)
    assert s(314) < 1.0 and flat_end < 314
    mid = w + round(0.65 * span)
    assert s(mid) == pytest.approx(0.01 + 0.99 * (1 - (mid - w) / span) / 0.7)
    assert s(total - 1) == pytest.approx(0.01)  # ends exactly at wpe
    assert all(s(i) >= s(i + 1) for i in range(w, total - 1))  # monotone after warm-up


def test_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=5e-5)
    sched = build_scheduler(opt, LinearSchedule(100, 10))
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(5e-5 * 0.005)
    assert seen[10] == pytest.approx(5e-5)
    assert seen[-1] == pytest.approx(5e-7)


def test_constant_schedule_and_no_warmup():
    s = LinearSchedule(10, 0, flat_fraction=1.0)
    assert [s(i) for i in range(10)] == [1.0] * 10
    assert warmup_steps_for(0.1, 3, 20) == 0


def test_no_decay_groups_on_tiny_varsr():
    model, _ = build_models(model_config("tiny"))
    groups = {g["group"]: g for g in param_groups(model, 0.05)}
    decay, nodecay = set(groups["decay"]["names"]), set(groups["no_decay"]["names"])
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05
    names = {n: p for n, p in model.named_parameters()}
    assert decay | nodecay == set(names) and not decay & nodecay
    # official rule, checked name by name
    for n, p in names.items():
        expect_nd = p.ndim == 1 or n.endswith("bias") or any(k in n for k in NO_DECAY_KEYS)
        assert (n in nodecay) == expect_nd, n
    assert "pos_start" in nodecay and "lvl_embed.weight" in nodecay
    assert "blocks.0.attn.scale_mul_1H11" in nodecay  # 4-D but named scale_mul
    assert all(n in nodecay for n in names if n.startswith("diffloss."))  # whole refiner, 2-D weights too
    assert "blocks.0.attn.mat_qkv.weight" in decay and "head.weight" in decay
    assert "class_emb.weight" in decay and "con_embedding.conv_out.weight" in decay


def test_groups_ignore_wrapper_prefixes():
    model, _ = build_models(model_config("tiny"))
    plain = [g["names"] for g in param_groups(model, 0.05)]
    apply_activation_checkpointing(model)  # ours wraps forward only: names unchanged
    assert [g["names"] for g in param_groups(model, 0.05)] == plain
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = _blocks(model)
    for i, b in enumerate(blocks):  # torch's wrapper module inserts an infix that must be ignored
        blocks[i] = checkpoint_wrapper(b)
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
    wrapped = [g["names"] for g in param_groups(model, 0.05)]
    assert sorted(map(sorted, plain)) == sorted(map(sorted, wrapped))
    assert clean_param_name("module.blocks.0._checkpoint_wrapped_module.attn.q_bias") == "blocks.0.attn.q_bias"


def test_build_optimizer_hyperparameters():
    model, _ = build_models(model_config("tiny"))
    opt = build_optimizer(model, lr=5e-5)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == sum(1 for p in model.parameters() if p.requires_grad)
    assert math.isclose(opt.param_groups[0]["lr"], 5e-5)
