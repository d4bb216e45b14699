"""Model-agnostic image-tokenizer fine-tuning loop (VARSR's VQVAE, PURE's VQ-8; spec varsr.md 13).

The app supplies ``step_fn(model, hr in [-1, 1]) -> (recon in [-1, 1], {name: loss})`` with its
own quantiser terms (commitment, codebook); this loop adds L1(recon, hr) (+ optional LPIPS),
AdamW, grad clipping, metrics.jsonl/wandb through ``Tracker``, atomic checkpoints in
``<run_dir>/checkpoints`` and auto-resume. Data comes from ``batches(start_step)``, an iterator
of HR batches in [0, 1] that starts at a given step, so a resumed run sees the batches an
uninterrupted one would (``hr_stream`` builds one from an ``HRTrainDataset``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.integrity import NonFiniteError
from common.logging import Tracker, get_logger, progress, save_image_grid
from common.train_state import TrainState

StepFn = Callable[[torch.nn.Module, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class FinetuneSettings:
    run_dir: str = "runs/vq_finetune"  # checkpoints/, metrics.jsonl, recon.png
    steps: int = 1000  # total optimizer steps (a resumed run continues up to this)
    lr: float = 1e-4  # AdamW learning rate (constant: fine-tuning, not pre-training)
    betas: tuple[float, float] = (0.5, 0.9)  # taming/VAR tokenizer betas
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm (<= 0 disables)
    lpips_weight: float = 0.0  # > 0 adds weight * LPIPS (pyiqa, offline weights in lpips_weights_dir)
    lpips_weights_dir: str | None = None
    log_every: int = 10  # steps between metrics.jsonl rows
    ckpt_every: int = 0  # steps between resumable checkpoints (0: only at the end)
    keep: int = 2  # checkpoints kept
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "arsr-vq"


class _Stream(Dataset):
    """Global item counter g -> item ``g % N`` of epoch ``g // N`` of an epoch-keyed dataset."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:  # only the sampler bounds iteration; report one epoch
        return len(self.dataset)

    def __getitem__(self, g: int):
        epoch, i = divmod(int(g), len(self.dataset))
        if getattr(self.dataset, "epoch", epoch) != epoch:
            self.dataset.set_epoch(epoch)  # new mixing plan and fresh random crops each epoch
        return self.dataset[i]


def hr_stream(dataset, batch_size: int, num_workers: int = 0, collate_fn=None) -> Callable[[int], Iterator]:
    """``batches(start_step)``: an endless DataLoader over ``dataset`` starting at item
    ``start_step * batch_size``; items are the same whichever worker loads them (HRTrainDataset)."""
    from common.data import collate_train

    def batches(start_step: int) -> Iterator:
        counter = itertools.count(start_step * batch_size)
        return iter(
            DataLoader(
                _Stream(dataset),
                batch_size=batch_size,
                sampler=counter,
                num_workers=num_workers,
                collate_fn=collate_fn or collate_train,
                drop_last=True,
            )
        )

    return batches


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image RGB PSNR (dB) of two batches in [0, 1]."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def reconstruct(model, step_fn: StepFn, hr01: torch.Tensor) -> torch.Tensor:
    """Eval-mode reconstruction of ``hr01`` (B, 3, H, W) in [0, 1], returned in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        recon, _ = step_fn(model, hr01 * 2 - 1)
    finally:
        model.train(was_training)
    return ((recon.float() + 1) / 2).clamp(0, 1)


def _lpips_fn(s: FinetuneSettings, device):
    if s.lpips_weight <= 0:
        return None
    from common.metrics.learned import create_pyiqa_metric  # lazy: pyiqa is slow to import

    metric, _ = create_pyiqa_metric("lpips", device=device, weights_dir=s.lpips_weights_dir, as_loss=True)
    return lambda x01, y01: metric(x01, y01).mean()


def finetune(
    model: torch.nn.Module,
    step_fn: StepFn,
    batches: Callable[[int], Iterable],
    s: FinetuneSettings,
    device: str | torch.device = "cpu",
    config: dict | None = None,
    eval_hr: torch.Tensor | None = None,
) -> dict:
    """Train ``model`` for ``s.steps`` steps (resuming from ``s.run_dir`` if it holds a checkpoint).

    Returns {"step", "l1", "psnr", <aux terms>, "seconds", "resumed_from"} where l1/psnr/aux are
    means over the last logging window (training batches), plus "eval_psnr" when ``eval_hr``
    (fixed HR crops in [0, 1]) is given; its reconstructions go to ``run_dir/recon.png``.
    """
    log = get_logger("arsr.vq_finetune")
    device = torch.device(device)
    model.to(device).train().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)
    lpips = _lpips_fn(s, device)
    step, stats, resumed_from = 0, {}, None
    ckpt = TrainState(s.run_dir, model, opt, keep=s.keep, app="finetune_vq")  # locks run_dir
    got = ckpt.resume()  # newest good checkpoint of run_dir (model, optimizer, RNG, step, stats)
    if got is not None:
        got.restore_rng()  # single process: always this run's own streams
        step, stats, resumed_from = got.step, dict(got.extra.get("stats", {})), str(got.path)
    start_step = step
    tracker = Tracker(s.project, s.run_dir, {**asdict(s), **(config or {})}, mode=s.wandb_mode)

    def save() -> None:
        ckpt.save(step, extra={"stats": stats})

    t0, window = time.time(), {}
    it = iter(batches(step))
    bar = progress(total=s.steps, initial=step, desc="vq-finetune")
    while step < s.steps:
        batch = next(it)
        hr01 = (batch["hr"] if isinstance(batch, dict) else batch).to(device, non_blocking=True)
        hr = hr01 * 2 - 1
        recon, aux = step_fn(model, hr)
        l1 = F.l1_loss(recon.float(), hr.float())
        loss = l1 + sum(aux.values(), torch.zeros((), device=device))
        terms = {"l1": l1, **aux}
        if lpips is not None:
            terms["lpips"] = lpips(((recon.float() + 1) / 2).clamp(0, 1), hr01.float())
            loss = loss + s.lpips_weight * terms["lpips"]
        if not torch.isfinite(loss):  # never stepped, saved or pruned past: the last checkpoint stays good
            values = {k: float(v) for k, v in terms.items()}
            raise NonFiniteError(f"non-finite tokenizer loss at step {step + 1} ({values}); stopping, nothing saved")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else math.inf)
        if not torch.isfinite(gnorm):
            raise NonFiniteError(f"non-finite gradient norm at step {step + 1}; stopping, nothing saved")
        opt.step()
        step += 1
        bar.update(1)
        row = {k: float(v.detach()) for k, v in terms.items()}
        row.update(
            loss=float(loss.detach()),
            grad_norm=float(gnorm),
            psnr=psnr01(((recon.detach().float() + 1) / 2).clamp(0, 1), hr01),
        )
        for k, v in row.items():
            window.setdefault(k, []).append(v)
        if step % s.log_every == 0 or step == s.steps:
            stats = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            tracker.log(stats, step)
            bar.set_postfix(l1=f"{stats['l1']:.4f}", psnr=f"{stats['psnr']:.2f}")
        if s.ckpt_every > 0 and step % s.ckpt_every == 0 and step < s.steps:
            save()
    bar.close()
    if got is None or step > start_step:
        save()
    out = {"step": step, **stats, "seconds": time.time() - t0, "resumed_from": resumed_from}
    if eval_hr is not None:
        rec = reconstruct(model, step_fn, eval_hr.to(device))
        out["eval_psnr"] = psnr01(rec, eval_hr.to(device))
        save_image_grid([[a, b] for a, b in zip(eval_hr.cpu(), rec.cpu())], f"{s.run_dir}/recon.png", ["HR", "recon"])
        tracker.log({"eval_psnr": out["eval_psnr"]}, step)
    tracker.finish()
    ckpt.close()
    log.info(
        f"tokenizer fine-tuning done at step {step}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float))
    )
    return out
