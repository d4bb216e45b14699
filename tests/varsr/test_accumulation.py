"""VARSR gradient accumulation: gradients before clipping, and resume position with accum > 1.

- (batch 4, accum 1) and (batch 2, accum 2) see the same 4 images in the first
  step; every image has the same number of tokens, so the mean of micro-batch means is the batch
  mean and the gradients must agree. They are read before clipping (a spy on ``clip_grad_norm_``):
  clipping to ``grad_clip`` hides a loss not divided by the number of micro-batches (the clipped
  gradient has the same norm whatever the factor). The refiner weight is 0 because its
  timestep/noise draws depend on the micro-batch shape. (Replaces test_train_loop's comparison of
  clipped gradients.)
- The sampler: an optimizer step sees the same images (and epochs) however its global batch is split
  into ranks x micro-batches x accumulation steps, across epoch ends too (catches epochs padded to
  micro-batches, where a step straddles two epochs only when accumulating).
- A run pre-empted after step 1 of 2 with accum 2 and resumed equals the uninterrupted run bit for
  bit: the resumed loader must skip step x accum micro-batches, not step.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from varsr.config import tiny_train_config
from varsr.data import ResumableBatchSampler
from varsr.train import Trainer


@pytest.mark.parametrize("n", [6, 8, 11])
def test_sampler_steps_do_not_depend_on_the_split(n):
    def steps(batch, world, accum, count=7):
        its = [iter(ResumableBatchSampler(n, batch, world, r, seed=2, grad_accum=accum)) for r in range(world)]
        return [sorted(x for _ in range(accum) for it in its for x in next(it)) for _ in range(count)]

    ref = steps(4, 1, 1)
    per_epoch = -(-n // 4)  # optimizer steps of 4 images per epoch, the last one wrapped
    assert [s[0][0] for s in ref] == [k // per_epoch for k in range(7)]  # one epoch per step, never two
    assert steps(1, 2, 2) == ref and steps(2, 1, 2) == ref and steps(1, 1, 4) == ref and steps(2, 2, 1) == ref


def pre_clip_grads(cfg, monkeypatch) -> tuple[dict, float]:
    """First step's gradients as clip_grad_norm_ receives them, and the logged grad_norm."""
    grabbed = {}
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        grabbed["grads"] = [None if p.grad is None else p.grad.detach().clone() for p in params]
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg.schedule.max_steps = 1
    trainer = Trainer(cfg)
    norms = []
    trainer.fit(callback=lambda t, m: norms.append(float(m["grad_norm"])))
    names = [n for n, _ in trainer.model.named_parameters()]
    return {n: g for n, g in zip(names, grabbed["grads"]) if g is not None}, norms[0]


@pytest.mark.slow  # two 1-step trainer builds, ~5 s idle
def test_accumulated_gradient_equals_big_batch_before_clipping(tmp_path, monkeypatch):
    results = []
    for bs, accum in ((4, 1), (2, 2)):
        cfg = tiny_train_config(str(tmp_path / f"b{bs}"))
        cfg.data.batch_size, cfg.optim.grad_accum, cfg.loss.diff_weight = bs, accum, 0.0
        results.append(pre_clip_grads(cfg, monkeypatch))
    (ref, ref_norm), others = results[0], results[1:]
    assert len(ref) > 10
    by_hand = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref.values()])))
    assert abs(by_hand - ref_norm) <= 1e-5 * by_hand  # the logged norm is the pre-clip one
    for grads, norm in others:  # a loss not divided by accum: norm x 2
        assert set(grads) == set(ref)
        assert abs(norm - ref_norm) <= 1e-4 * ref_norm, (norm, ref_norm)
        for name, g in ref.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


def _cfg(run_dir):
    cfg = tiny_train_config(str(run_dir))
    cfg.data.batch_size, cfg.optim.grad_accum, cfg.schedule.max_steps = 1, 2, 2
    return cfg


@pytest.mark.slow  # three trainer builds, 4 optimizer steps of 2 micro-batches: ~10 s idle
def test_resume_with_accumulation_matches_uninterrupted(tmp_path):
    ref = Trainer(_cfg(tmp_path / "full"))
    ref_out = ref.fit()

    def preempt(trainer, metrics):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    first = Trainer(_cfg(tmp_path / "resumed")).fit(callback=preempt)
    assert first["preempted"] and first["step"] == 1
    resumed = Trainer(_cfg(tmp_path / "resumed"))
    assert resumed.step == 1
    second = resumed.fit()
    assert first["losses"] + second["losses"] == ref_out["losses"]  # same micro-batches, same order
    for name, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref.model.state_dict()[name]), name
