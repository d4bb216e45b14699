"""PURE fine-tuning loop: one code path from a CPU unit test to multi-node FSDP2 / DeepSpeed.

``Trainer(cfg).fit()`` builds the model (``pure.build.build_lm``: architecture from the size
registry, weights from ``init.from_hf``, vocabulary growth), wraps it in an ``Engine``
(``pure.parallelize``: single process, FSDP2 or DeepSpeed ZeRO behind one interface) and trains
on ``pure.losses.PureLoss`` with the official AdamW + warm-up/half-cosine schedule
(``pure.optim``). The same layout as ``varsr/train.py``: losses / optimizer+schedule / model
building live in their own modules, this file is the loop.

State (model, optimizer, step, per-rank RNG, data position, EMA) is checkpointed every N steps
and at the next step boundary after SIGTERM/SIGUSR1/SIGUSR2; a restarted run resumes from the newest
checkpoint through the same code. Loss and statistics stay on the device and are read once per
logging interval (no host sync per step).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from common import checkpoint as ckpt_io
from common.batch_plan import apply_batch_plan
from common.dist import (
    all_reduce_mean,
    any_rank,
    barrier,
    destroy_distributed,
    init_distributed,
    seed_everything,
)
from common.ema import EMA, eval_weights
from common.integrity import FiniteGuard
from common.logging import Tracker, get_logger
from common.parallel import get_dtype
from common.run_lock import lock_run_dir
from pure.build import build_lm
from pure.data import build_train_loader
from pure.losses import PureLoss, supervised_positions
from pure.optim import flops_per_token, lr_at

log = get_logger("pure.train")
_LOGGED = ("loss", "ce_text", "ce_image", "z_loss", "grad_norm")  # device-accumulated per logging window


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


class Trainer:
    def __init__(self, cfg):
        from pure.parallelize import build_engine, fsdp2_meta_init, zero3_build

        global log
        self.dist = dist = init_distributed(None if cfg.run.device == "auto" else cfg.run.device)
        log = get_logger("pure.train")  # again after init: non-zero ranks drop to WARNING
        # the stated global batch split over this world (data.batch_size / optim.grad_accum set to it)
        cfg, self.plan = apply_batch_plan(cfg, dist.world_size)
        self.cfg = cfg
        log.info(self.plan.describe())  # the first line of every run: what one optimizer step really is
        self.device = dist.device
        seed_everything(cfg.run.seed, dist.rank)
        self.run_dir = Path(cfg.run.run_dir)
        lock_run_dir(self.run_dir, "training")  # a second training on this run dir stops here, in one line
        if cfg.export.hf_dir and Path(cfg.export.hf_dir).exists() and not cfg.export.overwrite:
            raise ValueError(
                f"export.hf_dir={cfg.export.hf_dir} already exists; set export.overwrite=true to replace it "
                "at the end of training, or choose another folder"
            )
        if cfg.optim.nonfinite == "skip" and cfg.parallel.backend == "deepspeed":
            raise ValueError("optim.nonfinite=skip needs the update outside DeepSpeed's engine.step: use stop")
        self.guard = FiniteGuard(cfg.optim.nonfinite)
        _, self.sampler, self.loader = build_train_loader(cfg, dist)
        self.steps_per_epoch = spe = self.sampler.steps_per_epoch()
        sc = cfg.schedule
        self.total_steps = sc.max_steps or math.ceil(sc.epochs * spe)
        self.warmup_steps = round(sc.warmup_epochs * spe)

        seed_everything(cfg.run.seed, 0)  # same initial weights on every rank
        full_state = None
        meta_init = cfg.parallel.backend == "fsdp2" and fsdp2_meta_init(dist)
        zero3 = zero3_build(cfg.optim, cfg.parallel, dist, cfg.data.batch_size)
        if meta_init:
            # Every rank builds on meta; rank 0 alone materialises (random init or HF shards) on CPU,
            # and build_engine broadcasts its weights into the shards.
            if dist.is_main:
                full_state = PureLoss(build_lm(cfg, torch.device("cpu"))).state_dict()
            self.lm = build_lm(cfg, torch.device("meta"), meta=True)
        else:  # ZeRO-3: partitioned from the start (deepspeed.zero.Init), never whole on a rank
            self.lm = build_lm(cfg, dist.device, partitioned=zero3)
        seed_everything(cfg.run.seed, dist.rank)  # distinct per-rank streams from here on (dropout)
        root = PureLoss(self.lm, cfg.loss.z_loss_weight)
        if not meta_init and zero3 is None:
            root = root.to(dist.device)
        self.engine = build_engine(root, self.lm, cfg.optim, cfg.parallel, dist, cfg.data.batch_size, full_state)
        del full_state
        if cfg.ema.enabled and cfg.parallel.backend == "deepspeed" and cfg.parallel.zero_stage >= 3:
            raise ValueError(
                "ema.enabled needs full or FSDP2-sharded parameters; DeepSpeed ZeRO-3 partitions them "
                "(use parallel.backend=fsdp2 or zero_stage <= 2)"
            )
        # Over `lm` (HF names); under FSDP2 its parameters and so the average are this rank's shards.
        self.ema = EMA(self.lm, cfg.ema.decay, cfg.ema.start_step) if cfg.ema.enabled else None
        self.step = 0
        # ---- resume (training-state manager) -------------------------------------------------
        self.state = self.engine.train_state(
            self.run_dir,
            {"ema": self.ema} if self.ema is not None else {},
            cfg.checkpoint.keep,
            cfg.checkpoint.async_save,
        )
        got = self.state.resume() if cfg.checkpoint.resume else None  # newest good step_<n>/ (common.train_state)
        if got is not None:
            self.step = got.step
        self.sampler.epoch, self.sampler.consumed = divmod(self.step, spe)  # data position = f(step)
        # Creating the iterator draws a base seed from the global RNG: do it before restoring RNGs so a
        # resumed run continues exactly the streams of the uninterrupted one (dropout masks included).
        self.batches = iter(self.loader)
        if got is not None:
            got.restore_rng()  # same world size: continue every rank's streams exactly
        # ---- end resume ----------------------------------------------------------------------
        self.tracker = Tracker(
            cfg.run.wandb_project,
            self.run_dir,
            config=_plain(cfg),
            mode=cfg.run.wandb_mode if cfg.logging.wandb else "disabled",
        )
        self.use_amp = dist.device.type == "cuda" and cfg.parallel.autocast and cfg.parallel.backend != "deepspeed"
        self._seq_len = 0

    # ---- save (training-state manager) --------------------------------------------------------
    def save(self) -> None:
        """Collective: every rank calls it at the same step."""
        # the config travels with the checkpoint so launch/export_checkpoint.py can rebuild the model
        # The data position is a function of the step (resume recomputes it the same way); recorded for
        # readers of meta.json. The sampler's own counters may run ahead of it with loader workers.
        epoch, consumed = divmod(self.step, self.steps_per_epoch)
        position = {"epoch": epoch, "consumed": consumed}
        self.state.save(self.step, extra={"data_position": position, "config": _plain(self.cfg)})

    # ---- end save ------------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches. Returns device tensors (no host sync)
        for `_LOGGED` plus host-side token counts."""
        cfg, eng = self.cfg, self.engine
        accum = cfg.optim.grad_accum
        eng.set_lr(lr_at(self.step, self.total_steps, self.warmup_steps, self.plan.lr, cfg.schedule.min_lr))
        acc = torch.zeros(len(_LOGGED) - 1, device=self.device)  # loss, ce_text, ce_image, z_loss
        n_tokens = n_pad = n_seen = n_head = 0
        for _ in range(accum):
            batch = next(self.batches)
            # non_blocking: with pinned batches (data.pin_memory) the copy overlaps the previous step's kernels
            ids = batch["input_ids"].to(self.device, non_blocking=True)
            lab = batch["labels"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                loss, stats = eng.forward(ids, lab)
            eng.backward(loss)
            vals = [loss.detach(), stats["ce_text"], stats["ce_image"], stats["z_loss"]]
            acc += torch.stack([torch.as_tensor(v, device=self.device).float() for v in vals]) / accum
            n_tokens += batch["n_tokens"]
            n_pad += batch["n_pad"]
            n_seen += ids.numel()
            own, nxt = supervised_positions(batch["labels"])  # host-side batch: no device sync
            n_head += int((own | nxt).sum())
            self._seq_len = ids.shape[1]
        skipped = []  # optim.nonfinite=skip: this update is dropped when its loss or norm is NaN/inf

        def skip(norm):
            skipped.append(self.guard.skip_update(self.step + 1, acc[0], norm))
            return skipped[-1]

        gnorm = eng.step(skip if self.guard.policy == "skip" else None)
        self.guard.record(self.step + 1, acc[0], gnorm)  # stop: read before the next save / log line
        if self.ema is not None and not any(skipped):
            self.ema.update(self.lm, self.step)
        self.step += 1
        gnorm = torch.as_tensor(float("nan") if gnorm is None else gnorm, device=self.device).float().reshape(1)
        counts = {"n_tokens": n_tokens, "n_pad": n_pad, "n_seen": n_seen, "n_head": n_head}
        return {"values": torch.cat([acc, gnorm]), **counts}

    def _flops_per_token(self, tok: dict) -> float:
        """Training FLOPs per real token over a logging window (lm_head only on supervised rows)."""
        head = tok["n_head"] / max(tok["n_tokens"], 1)
        return flops_per_token(self.lm.config, self._seq_len, head_fraction=head)

    def fit(self, on_step=None) -> dict:
        """Train to `total_steps` (or until pre-empted); returns {"losses", "step", "run_dir", "preempted"}.

        `on_step(step, loss)` runs after every optimizer step with the rank-local loss as a device
        tensor (tests use it to send SIGTERM); `losses` are the rank-mean losses of every step."""
        cfg, dist = self.cfg, self.dist
        pre = ckpt_io.PreemptionHandler() if cfg.checkpoint.save_on_sigterm else None
        every_log = cfg.logging.every_steps
        losses, window, tok = [], [], {"n_tokens": 0, "n_pad": 0, "n_seen": 0, "n_head": 0}
        t0, stopped = time.time(), False
        self.engine.module.train()

        def flush():  # one collective + one host read per logging window
            nonlocal t0
            stacked = all_reduce_mean(torch.stack(window)).tolist()  # steps x _LOGGED
            losses.extend(row[0] for row in stacked)
            dt = max(time.time() - t0, 1e-9)
            mean = {k: sum(r[i] for r in stacked) / len(stacked) for i, k in enumerate(_LOGGED)}
            tps = tok["n_tokens"] / dt  # per rank
            metrics = dict(
                mean,
                lr=self.engine.optimizer.param_groups[0]["lr"],
                tokens_per_s=tps * dist.world_size,
                mfu=tps * self._flops_per_token(tok) / cfg.logging.peak_flops,
                padding_waste=tok["n_pad"] / max(tok["n_seen"], 1),
                epoch=self.step / self.steps_per_epoch,
            )
            if torch.cuda.is_available():
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.tracker.log(metrics, self.step)
            log.info(
                "step %d/%d loss %.4f (text %.3f image %.3f) gnorm %.3g lr %.3g tok/s %.0f MFU %.3f",
                self.step,
                self.total_steps,
                metrics["loss"],
                metrics["ce_text"],
                metrics["ce_image"],
                metrics["grad_norm"],
                metrics["lr"],
                metrics["tokens_per_s"],
                metrics["mfu"],
            )
            window.clear()
            tok.update(n_tokens=0, n_pad=0, n_seen=0, n_head=0)
            t0 = time.time()

        try:
            while self.step < self.total_steps:
                out = self.train_step()
                window.append(out["values"])
                for k in tok:
                    tok[k] += out[k]
                if on_step is not None:
                    on_step(self.step, out["values"][0])
                # The one per-step collective: every rank must agree to checkpoint at the same step.
                stopped = pre is not None and any_rank(pre.requested)
                if stopped or (every_log > 0 and self.step % every_log == 0) or self.step == self.total_steps:
                    flush()
                    self.guard.check()  # optim.nonfinite=stop: one line naming the first NaN/inf step
                every = cfg.checkpoint.every_steps
                if stopped or (every > 0 and self.step % every == 0) or self.step == self.total_steps:
                    self.guard.check()  # before anything is saved
                    self.save()
                if stopped:
                    log.warning("pre-emption signal received: checkpointed step %d, exiting", self.step)
                    break
            if window:
                flush()
            self.guard.check()  # also guards the export below
            self.state.wait()  # an async save must be on disk before the process may exit
            if cfg.export.hf_dir and self.step == self.total_steps:
                self.export()
            barrier()
        finally:
            self.tracker.finish()
            self.state.close()
            if pre is not None:  # after the checkpoint: submitit's USR2 handler requeues and exits here
                pre.restore()
        return {"losses": losses, "step": self.step, "run_dir": str(self.run_dir), "preempted": stopped}

    def export(self) -> None:
        """Consolidated HF safetensors shards + config.json (official checkpoint layout), rank 0 writes.

        Weights: the EMA when enabled and `ema.use_for_eval`, else the trained ones; dtype
        `export.dtype`. config.json keeps every field of `init.from_hf`'s config.json."""
        from common.publish import publish
        from pure.official import check_hf_shards, read_hf_config, save_hf_shards

        cfg = self.cfg.export
        dtype = get_dtype(cfg.dtype)
        # Written inside the context: in one process the state dict aliases the live parameters.
        with eval_weights(self.ema, self.lm, self.cfg.ema.use_for_eval):
            sd = self.engine.full_model_state_dict()  # collective under FSDP2 / ZeRO-3
            sd = {k.removeprefix("lm."): v for k, v in sd.items()}
            if self.dist.is_main:  # into a temp folder, verified, swapped in whole (common.publish)
                write = lambda tmp: save_hf_shards(  # noqa: E731
                    sd,
                    tmp,
                    max_shard_size=cfg.max_shard_size,
                    config=self.lm.config,
                    vocabulary_map=getattr(self.lm.config, "vocabulary_map", None),
                    dtype=dtype,
                    base_config=read_hf_config(self.cfg.init.from_hf),
                )
                publish(cfg.hf_dir, write, lambda tmp: check_hf_shards(tmp, sd), cfg.overwrite, "export.hf_dir")
        if self.dist.is_main:
            log.info(
                "exported HF shards (%s%s) to %s",
                cfg.dtype,
                ", EMA weights" if self.ema is not None and self.cfg.ema.use_for_eval else "",
                cfg.hf_dir,
            )
        barrier()


def train(cfg, on_step=None) -> dict:
    """Build a :class:`Trainer` and run it; returns ``{"losses", "step", "run_dir", "preempted"}``."""
    return Trainer(cfg).fit(on_step)


def main(cfg, on_step=None) -> dict:
    try:
        return train(cfg, on_step)
    finally:
        destroy_distributed()
