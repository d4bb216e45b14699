"""VARSR training loop: one code path from a CPU unit test to multi-node torchrun.

``Trainer(cfg).fit()`` builds the models (``varsr.model.build_models``), initialises them from
official checkpoints (``varsr.official``) unless a checkpoint of this run exists, wraps the
transformer (``varsr.parallelize``), and trains with AMP, gradient accumulation and clipping on
``varsr.losses.varsr_loss``. ``mode=sr`` trains the LR-conditioned model; ``mode=c2i`` the
class-to-image pretraining model (spec 7: ``lr_prefix=False``, folder-per-class data, no LR,
label dropout to the null class inside the loss) through the same loop.
State (model, optimizer, scheduler, scaler, step, per-rank RNG, data position, EMA) is checkpointed
atomically every N steps and at the next step boundary after SIGTERM/SIGUSR1/SIGUSR2; a restarted run
resumes from the newest checkpoint through the same code.
Rank 0 owns the run directory, logging (wandb offline + metrics.jsonl) and validation grids.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from common.batch_plan import apply_batch_plan
from common.checkpoint import PreemptionHandler
from common.dist import all_reduce_mean, any_rank, barrier, init_distributed, seed_everything
from common.ema import EMA, eval_weights
from common.integrity import FiniteGuard
from common.logging import Tracker, get_logger
from common.parallel import get_dtype
from common.run_lock import lock_run_dir
from common.train_state import TrainState, has_checkpoint
from varsr.config import VARSRTrainConfig, check_train_config
from varsr.data import (
    BatchMaker,
    build_train_dataset,
    build_train_loader,
    check_c2i_classes,
    make_val_pairs,
    step_generator,
)
from varsr.optim import LinearSchedule, build_optimizer, build_scheduler, warmup_steps_for
from varsr.parallelize import get_full_state, grad_sync, is_sharded, parallelize, unwrap

log = get_logger("varsr.train")


class Trainer:
    def __init__(self, cfg: VARSRTrainConfig):
        from varsr.model import build_models

        dev = None if cfg.run.device == "auto" else cfg.run.device
        self.dist = init_distributed(dev)
        self.device, self.rank, self.world = self.dist.device, self.dist.rank, self.dist.world_size
        cfg, plan = apply_batch_plan(cfg, self.world)  # optim.global_batch -> micro-batch x accumulation here
        self.cfg, self.plan = cfg, plan
        log.info(plan.describe())  # the first line of every run: what one optimizer step really is
        self.run_dir = Path(cfg.run.run_dir)
        lock_run_dir(self.run_dir, "training")  # a second training on this run dir stops here, in one line
        node = OmegaConf.structured(cfg)  # built once: OmegaConf conversion is slow for this tree
        self.config_yaml, config_dict = OmegaConf.to_yaml(node), OmegaConf.to_container(node)
        check_train_config(cfg)  # before any model is built: mismatches fail in seconds
        self.num_real_classes = check_c2i_classes(cfg) if cfg.mode == "c2i" else None
        # Same seed on every rank while building: FSDP2 shards each rank's local init (no broadcast)
        # and the frozen tokenizer is never synchronised, so all ranks must construct identical weights.
        seed_everything(cfg.run.seed, 0)
        if cfg.precision.tf32 and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        model, self.vqvae = build_models(cfg.model, device=self.device)
        self.vqvae.eval().requires_grad_(False)  # frozen tokenizer: targets only
        resume_from = cfg.checkpoint.resume and has_checkpoint(self.run_dir)
        if not resume_from:
            self._init_weights(model)
        elif cfg.init.vqvae:  # the tokenizer is not in our checkpoints (it is frozen)
            self._load_vqvae()
        model.train()
        seed_everything(cfg.run.seed, self.rank)  # per-rank streams from here on (drop-path, refiner noise)
        self.model = parallelize(model, cfg.parallel, self.dist, amp=cfg.precision.dtype)
        o = cfg.optim
        self.optimizer = build_optimizer(
            self.model, plan.lr, o.betas, o.eps, o.weight_decay, tuple(o.no_decay_keys), o.fused
        )
        self.accum = max(1, int(o.grad_accum))

        self.dataset = build_train_dataset(cfg)
        global_batch = cfg.data.batch_size * self.world
        self.steps_per_epoch = math.ceil(len(self.dataset) / (global_batch * self.accum))  # = the sampler's
        sc = cfg.schedule
        self.total_steps = sc.max_steps or max(1, math.ceil(sc.epochs * self.steps_per_epoch))
        self.schedule = LinearSchedule(
            self.total_steps,
            warmup_steps_for(sc.warmup_epochs, self.steps_per_epoch, self.total_steps),
            sc.warmup_start,
            sc.flat_fraction,
            sc.end_ratio,
        )
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        p = cfg.precision
        amp = get_dtype(p.dtype)
        self.amp_dtype = None if amp == torch.float32 else amp  # fp32: autocast off
        # FSDP2: each rank checks only its gradient shards for inf/NaN; the sharded scaler all-reduces the
        # verdict so every rank skips (or takes) the same step and keeps the same scale.
        if is_sharded(self.model):
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler as scaler_cls
        else:
            scaler_cls = torch.amp.GradScaler
        self.scaler = scaler_cls(
            self.device.type, init_scale=p.init_scale, growth_interval=p.growth_interval, enabled=p.dtype == "fp16"
        )
        self.ema = EMA(unwrap(self.model), cfg.ema.decay, cfg.ema.start_step) if cfg.ema.enabled else None
        self.step, self._val = 0, None
        objects = {"scheduler": self.scheduler, "scaler": self.scaler, **({"ema": self.ema} if self.ema else {})}
        self.state = TrainState(
            self.run_dir,
            self.model,
            self.optimizer,
            objects,
            keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
            app="varsr",
        )
        if resume_from:
            self._resume()
        if self.dist.is_main:  # only now: a refused resume must leave the run's own config.yaml as it was
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
        barrier()
        self.guard = FiniteGuard(cfg.optim.nonfinite)
        self.loader, self.sampler = build_train_loader(
            self.dataset, cfg, self.world, self.rank, start_micro_batch=self.step * self.accum, device=self.device
        )
        self.batch_maker = BatchMaker(cfg, self.device)
        self.tracker = Tracker(cfg.run.wandb_project, self.run_dir, config_dict, mode=cfg.run.wandb_mode)

    # -- initialisation / resume ----------------------------------------------------------------
    def _load_vqvae(self) -> None:
        from varsr.official import load_official_vqvae

        load_official_vqvae(self.cfg.init.vqvae, self.vqvae)

    def _init_weights(self, model) -> None:
        ic = self.cfg.init
        if ic.vqvae:
            self._load_vqvae()
        elif not ic.allow_random_vqvae:
            raise ValueError(
                "init.vqvae (VARSR's VQVAE.pth) is required; set init.allow_random_vqvae=true only for tests/benchmarks"
            )
        if ic.c2i_official:  # mode=c2i (check_train_config)
            from varsr.official import load_official_c2i

            load_official_c2i(ic.c2i_official, model)
        elif ic.varsr:
            from varsr.official import load_official_varsr

            load_official_varsr(ic.varsr, model)
        elif ic.c2i:
            from varsr.official import transfer_from_c2i

            log.info(f"C2I transfer from {ic.c2i}: {transfer_from_c2i(model, ic.c2i)}")

    def _resume(self) -> None:
        got = self.state.resume()  # newest good checkpoint; bad ones are skipped with a warning
        self.step = got.step
        if not got.restore_rng():  # different world size: fresh but reproducible streams
            log.warning(f"checkpoint written by another world size; reseeding {self.world} ranks")
            seed_everything(self.cfg.run.seed + self.step, self.rank)
        saved_gb = got.extra.get("data", {}).get("global_batch")
        if saved_gb and saved_gb != self.cfg.data.batch_size * self.world:
            log.warning(
                f"global batch changed ({saved_gb} -> {self.cfg.data.batch_size * self.world}); "
                "the data position is kept in global batches"
            )

    def save(self) -> Path:
        """Collective: every rank writes its shards of ``checkpoints/step_<step>`` (common.train_state)."""
        return self.state.save(
            self.step,
            extra={
                "data": {
                    "global_batches_consumed": self.step * self.accum,
                    "global_batch": self.cfg.data.batch_size * self.world,
                },
                "config": self.config_yaml,
            },
        )

    # -- one optimizer step ---------------------------------------------------------------------
    def train_step(self, batches) -> dict:
        from varsr.losses import varsr_loss

        cfg = self.cfg
        lr_now = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}  # device tensors: read once per logging window, not per step
        for micro in range(self.accum):
            batch = next(batches)
            gen = step_generator(self.device, cfg.run.seed, self.rank, self.step, micro)
            hr, lr, label = self.batch_maker(batch, gen)  # lr is None in c2i mode
            with grad_sync(self.model, micro == self.accum - 1):
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    # c2i: label dropout draws from `gen` (keyed by step) -> resume-exact; sr: no draws
                    loss, stats = varsr_loss(
                        self.model, self.vqvae, hr, lr, label, diff_weight=cfg.loss.diff_weight, generator=gen
                    )
                self.scaler.scale(loss / self.accum).backward()
            for k, v in {"loss": loss.detach(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v.float() / self.accum
        self.scaler.unscale_(self.optimizer)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # FSDP2 returns a DTensor
        # fp16: an inf norm is the loss scaler's overflow step, which it skips and re-scales itself
        gn_seen = None if self.scaler.is_enabled() else gn
        skip = self.guard.skip_update(self.step + 1, totals["loss"], gn_seen)  # optim.nonfinite=skip only
        self.guard.record(self.step + 1, totals["loss"], gn_seen)  # stop: read before the next save / log line
        if not skip:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():  # official cap at 2^15, applied on the device (get_scale() would sync)
            self.scaler.update(new_scale=self.scaler._scale.clamp(max=cfg.precision.max_scale))
        self.scheduler.step()
        if self.ema is not None and not skip:
            self.ema.update(unwrap(self.model), self.step)
        self.step += 1
        totals.update(lr=lr_now, grad_norm=gn.detach().float())  # lr: a host float (no device copy)
        if self.scaler.is_enabled():
            totals["loss_scale"] = self.scaler._scale.detach().clone()
        return totals

    # -- main loop -------------------------------------------------------------------------------
    def fit(self, callback=None) -> dict:
        """Train to ``total_steps`` (or until pre-empted). ``callback(trainer, metrics)`` runs after each step."""
        cfg = self.cfg
        preempt = PreemptionHandler() if cfg.checkpoint.save_on_sigterm else None
        batches, losses, last_saved, stopped = iter(self.loader), [], -1, False
        window = _MetricWindow(cfg.data.batch_size * self.world * self.accum)
        try:
            while self.step < self.total_steps:
                metrics = self.train_step(batches)
                window.add(metrics)
                if callback is not None:
                    callback(self, metrics)
                if cfg.logging.every_steps > 0 and self.step % cfg.logging.every_steps == 0:
                    losses.extend(window.flush(self.tracker, self.step, self.total_steps))
                    self.guard.check()
                stopped = preempt is not None and any_rank(preempt.requested)
                every = cfg.checkpoint.every_steps
                if stopped or (every > 0 and self.step % every == 0):
                    self.guard.check()
                    self.save()
                    last_saved = self.step
                if cfg.validation.every_steps > 0 and self.step % cfg.validation.every_steps == 0 and not stopped:
                    self.validate()
                if stopped:
                    log.warning(f"pre-emption signal: checkpointed step {self.step}, exiting")
                    break
            losses.extend(window.flush(None, self.step, self.total_steps))  # steps since the last log line
            self.guard.check()  # also guards the export below
            if not stopped and last_saved != self.step:
                self.save()
            self.state.wait()  # an async save must be on disk before the process may exit
            if not stopped:
                if cfg.checkpoint.export_official:
                    self.export()
        finally:
            self.tracker.finish()
            self.state.close()
            if preempt is not None:  # after the checkpoint: submitit's USR2 handler requeues and exits here
                preempt.restore()
        return {"step": self.step, "losses": losses, "run_dir": str(self.run_dir), "preempted": stopped}

    # -- validation and export -------------------------------------------------------------------
    def _sampling_model(self):
        """The model to sample from: FSDP2 needs all ranks in the forward, DDP/none use rank 0 only."""
        fsdp = self.cfg.parallel.backend == "fsdp2" and self.world > 1
        return (self.model if fsdp else unwrap(self.model)), fsdp

    @torch.no_grad()
    def validate(self) -> dict:
        """sr: sample the validation LRs, save a grid LR | SR | HR, log PSNR (and LPIPS when available).
        c2i: save a grid with one row of samples per validation class."""
        model, collective = self._sampling_model()
        out = {}
        if self.dist.is_main or collective:
            with eval_weights(self.ema, model, self.cfg.ema.use_for_eval):  # EMA weights when enabled
                out = self._validate_on(model)
        barrier()
        return out

    def _val_pairs(self):
        if self._val is None:
            self._val = make_val_pairs(self.cfg, self.device)
        return self._val

    def _val_classes(self) -> list[int]:
        v, n = self.cfg.validation, self.num_real_classes
        classes = list(v.classes) or list(range(min(v.num_images, n)))
        bad = [c for c in classes if not 0 <= c < n]
        if bad:
            raise ValueError(f"validation.classes {bad} out of range: the data has {n} classes (0..{n - 1})")
        return classes

    def _sample_eval(self, model, fn):
        """Run ``fn(generator)`` with the model in eval mode and the validation seed."""
        was_training = model.training
        model.eval()
        try:
            return fn(torch.Generator(device=self.device).manual_seed(self.cfg.validation.seed))
        finally:
            model.train(was_training)

    def _validate_on(self, model) -> dict:
        from common.logging import save_image_grid

        v = self.cfg.validation
        out, path = {}, self.run_dir / "val" / f"step_{self.step:08d}.png"
        if self.cfg.mode == "c2i":
            from varsr.sample_c2i import sample_c2i

            classes, k = self._val_classes(), max(1, v.samples_per_class)
            labels = torch.tensor(classes, device=self.device).repeat_interleave(k)
            imgs = self._sample_eval(model, lambda g: sample_c2i(model, self.vqvae, labels, cfg=v.cfg, generator=g))
            rows, heads = [list(imgs[i * k : (i + 1) * k].cpu()) for i in range(len(classes))], None
        else:
            from common.metrics import psnr_y
            from varsr.sample import sample_sr

            hr, lr = self._val_pairs()
            sr = self._sample_eval(model, lambda g: sample_sr(model, self.vqvae, lr, cfg=v.cfg, generator=g))
            out["val/psnr"] = float(torch.as_tensor(psnr_y(sr, hr)).float().mean())
            if "lpips" in v.metrics:
                out.update(_lpips(sr, hr, self.device))
            rows, heads = [[lr[i].cpu(), sr[i].cpu(), hr[i].cpu()] for i in range(len(hr))], ["LR", "SR", "HR"]
        if self.dist.is_main:
            save_image_grid(rows, path, labels=heads)
            self.tracker.log(out, self.step)
            self.tracker.log_image("val/grid", path, self.step)
            vals = " ".join(f"{k}={x:.4f}" for k, x in out.items())
            log.info(f"validation step {self.step}: {vals} -> {path}")
        return out

    def export(self) -> Path | None:
        """Write ``run_dir/export/VARSR.pth`` (c2i: ``VARSR_C2I.pth``) in the official trainer layout (rank 0)."""
        from varsr.official import export_official

        model, collective = self._sampling_model()
        if collective:  # gather the full weights into a CPU copy
            from varsr.model import build_models

            with eval_weights(self.ema, model, self.cfg.ema.use_for_eval):
                sd = get_full_state(self.model)["model"]
            if not self.dist.is_main:
                barrier()
                return None
            model = build_models(self.cfg.model, device="cpu")[0]
            model.load_state_dict(sd)
        path = None
        if self.dist.is_main:
            path = self.run_dir / "export" / ("VARSR_C2I.pth" if self.cfg.mode == "c2i" else "VARSR.pth")
            path.parent.mkdir(parents=True, exist_ok=True)
            ema = None if collective else self.ema  # the gathered copy already holds the EMA weights
            with eval_weights(ema, model, self.cfg.ema.use_for_eval):
                export_official(model, self.vqvae, path)
            log.info(
                f"exported official-layout weights to {path}"
                + (" (EMA)" if self.ema is not None and self.cfg.ema.use_for_eval else "")
            )
        barrier()
        return path


class _MetricWindow:
    """Per-step metrics kept on the device between log lines: one host read (and one all-reduce)
    per logging window instead of a host sync per step. Returns the rank-local per-step losses."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step, self.rows, self.lrs = samples_per_step, [], []
        self.t0 = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.keys = sorted(k for k, v in metrics.items() if torch.is_tensor(v))
        self.rows.append(torch.stack([metrics[k].reshape(()) for k in self.keys]))
        self.lrs.append(metrics["lr"])

    def flush(self, tracker, step: int, total: int) -> list[float]:
        if not self.rows:
            return []
        stacked = torch.stack(self.rows)
        losses = stacked[:, self.keys.index("loss")].tolist()
        if tracker is not None:  # every rank: the mean is a collective
            mean = all_reduce_mean(stacked.mean(0)).tolist()
            row = {f"train/{k}": v for k, v in zip(self.keys, mean, strict=True)}
            row["train/lr"] = self.lrs[-1]
            dt = max(time.perf_counter() - self.t0, 1e-9)
            row["train/samples_per_s"] = self.samples_per_step * len(self.rows) / dt
            tracker.log(row, step)
            log.info(f"step {step}/{total} " + " ".join(f"{k[6:]}={v:.4g}" for k, v in row.items()))
        self.rows, self.lrs, self.t0 = [], [], time.perf_counter()
        return losses


def _lpips(sr: torch.Tensor, hr: torch.Tensor, device: torch.device) -> dict:
    """LPIPS through the common metric stack; skipped (logged once) when its weights are missing."""
    try:
        from common.metrics import MetricStack

        return {"val/lpips": float(MetricStack(["lpips"], device=str(device)).score(sr, hr)["lpips"].mean())}
    except Exception as e:  # no network: pyiqa cannot fetch weights
        if not getattr(_lpips, "warned", False):
            log.warning(f"LPIPS skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            _lpips.warned = True
        return {}


def train(cfg: VARSRTrainConfig, callback=None) -> dict:
    """Build a :class:`Trainer` and run it; returns ``{"step", "losses", "run_dir", "preempted"}``."""
    return Trainer(cfg).fit(callback)
