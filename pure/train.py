"""PURE fine-tuning loop: loss, schedule, metrics, auto-resume, checkpoints, HF export.

One code path for one CPU process, one GPU, torchrun/FSDP2 and DeepSpeed: the backend lives in
pure/parallelize.py behind `Engine`. Official recipe (spec pure.md §5-6): CE over all 73,728
classes averaged over every supervised token of the micro-batch, AdamW (0.9, 0.95, eps 1e-8,
wd 0.1 on all params), lr 4e-4 with 0.5-epoch linear warm-up then half-cosine to 0 (updated
every iteration), grad clip 4.0, dropout 0.05, z-loss 0 (ours masks the *shifted* positions).

Resume: `run_dir/checkpoints/ckpt_<step>.pt` (a file for FSDP2/single process written with
full state dicts, so any world size can resume; a directory for DeepSpeed). Each holds model,
optimizer, step, per-rank RNG and the sampler position (derived from the step).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from common import checkpoint as ckpt_io
from common.config import dataclass_from_dict
from common.dist import all_reduce_mean, barrier, destroy_distributed, init_distributed, seed_everything
from common.logging import Tracker, get_logger
from pure.sequence import IGNORE, image_label_mask

log = get_logger("pure.train")


# ------------------------------------------------------------------------------ loss
def _ce_chunk(logits: torch.Tensor, target: torch.Tensor):
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1)
    return lse - lf.gather(-1, target[:, None])[:, 0], lse


class PureLoss(nn.Module):
    """Root module for training: next-token CE (+ optional z-loss) of the wrapped ChameleonForCausalLM.

    Only supervised positions go through lm_head (the -100 prompt half needs no logits), and the
    fp32 CE is computed in checkpointed chunks so at most `chunk` x V fp32 values are alive.
    """

    def __init__(self, lm: nn.Module, z_loss_weight: float = 0.0, chunk: int = 2048):
        super().__init__()
        self.lm = lm
        self.z_loss_weight = float(z_loss_weight)
        self.chunk = int(chunk)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids=None, attention_mask=None):
        h = self.lm.forward_hidden(input_ids, position_ids=position_ids, attention_mask=attention_mask)
        target = labels[:, 1:]
        sel = target != IGNORE  # shifted mask: position t predicts label t+1 (z-loss uses it too)
        hs, tg = h[:, :-1][sel], target[sel]
        is_img = image_label_mask(labels)[:, 1:][sel]
        logits = self.lm.lm_head(hs)
        ces, lses = [], []
        for s in range(0, max(tg.numel(), 1), self.chunk):
            lg, t = logits[s:s + self.chunk], tg[s:s + self.chunk]
            if torch.is_grad_enabled() and t.numel():
                ce, lse = checkpoint(_ce_chunk, lg, t, use_reentrant=False)
            else:
                ce, lse = _ce_chunk(lg, t)
            ces.append(ce)
            lses.append(lse)
        ce, lse = torch.cat(ces), torch.cat(lses)
        n = max(tg.numel(), 1)
        loss = ce.sum() / n
        z = (lse.float() ** 2).sum() / n
        if self.z_loss_weight:
            loss = loss + self.z_loss_weight * z
        if tg.numel() == 0:
            loss = loss + 0.0 * logits.sum()  # keep the graph connected for every rank's backward
        with torch.no_grad():
            n_img, n_txt = int(is_img.sum()), int((~is_img).sum())
            stats = {
                "ce": ce.sum() / n, "z_loss": z.detach(),
                "ce_image": ce[is_img].sum() / max(n_img, 1), "ce_text": ce[~is_img].sum() / max(n_txt, 1),
                "n_image": n_img, "n_text": n_txt,
            }
        return loss, stats


# ------------------------------------------------------------------------------ schedule / flops
def lr_at(step: int, total: int, warmup: int, peak: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then half-cosine to `min_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmul weights (embedding lookup excluded) plus the
    attention score/value matmuls 12*L*C*T (PaLM appendix B)."""
    c, L = model_cfg.hidden_size, model_cfg.num_hidden_layers
    kv = model_cfg.num_key_value_heads * (c // model_cfg.num_attention_heads)
    per_layer = 2 * c * c + 2 * c * kv + 3 * c * model_cfg.intermediate_size
    n = L * per_layer + model_cfg.vocab_size * c  # lm_head counts, embedding lookup does not
    return 6.0 * n + 12.0 * L * c * seq_len


# ------------------------------------------------------------------------------ model init
def build_lm(cfg, device: torch.device, meta: bool = False):
    """ChameleonForCausalLM from cfg.model (+ official weights, + vocabulary extension).

    meta=True: final shapes on the meta device, no weights (filled later from rank 0)."""
    from pure.model.chameleon import ChameleonForCausalLM
    from pure.model.config import ChameleonConfig, chameleon_config

    m = cfg.model if isinstance(cfg.model, dict) else dict(cfg.model or {})
    size = m.pop("size", None) if isinstance(m, dict) else None
    mcfg = chameleon_config(size, **m) if size else dataclass_from_dict(ChameleonConfig, m)
    mcfg.dropout = float(cfg.dropout)
    target_vocab = mcfg.vocab_size
    if meta:
        with torch.device("meta"):
            return ChameleonForCausalLM(mcfg)
    if cfg.init.extend_vocab_from:
        mcfg.vocab_size = int(cfg.init.extend_vocab_from)
    lm = ChameleonForCausalLM(mcfg)
    if cfg.init.from_hf:
        from pure.official import load_hf_shards

        load_hf_shards(lm, cfg.init.from_hf)
    if cfg.init.extend_vocab_from:
        extend_vocabulary(lm, target_vocab, seed=cfg.run.seed)
    return lm.to(device)


@torch.no_grad()
def extend_vocabulary(lm: nn.Module, new_vocab: int, seed: int = 0, image_ids=(4, 8196)) -> None:
    """Grow a Lumina-mGPT-style 65,536-row model to PURE's 73,728 rows (the 8,192 extra LlamaGen slots).

    PURE does not say how its new rows were initialised. Ours: new *embedding* rows are the mean
    of the existing image-token rows (ids 4..8195) plus Gaussian noise with their per-dimension
    std, so new codes start inside the image-token cluster; new *lm_head* rows are zero, as
    Lumina-mGPT's starting-point builder zeroes image-token rows of lm_head: the new ids start
    with logit 0 and are learnt from there, without disturbing text/old-image predictions.
    """
    old_e, old_h = lm.model.embed_tokens.weight, lm.lm_head.weight
    old_v, c = old_e.shape
    if new_vocab <= old_v:
        raise ValueError(f"extend_vocabulary: new size {new_vocab} must exceed the current {old_v}")
    g = torch.Generator().manual_seed(seed)
    img = old_e[image_ids[0]:image_ids[1]].float()
    mu, sd = img.mean(0), img.std(0)
    extra = mu + sd * torch.randn(new_vocab - old_v, c, generator=g)
    emb = nn.Embedding(new_vocab, c, dtype=old_e.dtype, device=old_e.device)
    emb.weight.copy_(torch.cat([old_e, extra.to(old_e)]))
    head = nn.Linear(c, new_vocab, bias=False, dtype=old_h.dtype, device=old_h.device)
    head.weight.copy_(torch.cat([old_h, torch.zeros(new_vocab - old_v, c, dtype=old_h.dtype, device=old_h.device)]))
    lm.model.embed_tokens, lm.lm_head = emb, head
    lm.config.vocab_size = new_vocab


# ------------------------------------------------------------------------------ loop
def _gather_rng(dist) -> list:
    state = ckpt_io.rng_state()
    if dist.world_size == 1:
        return [state]
    out = [None] * dist.world_size
    torch.distributed.all_gather_object(out, state)
    return out


def build_loader(cfg, dist):
    from torch.utils.data import DataLoader

    from pure.data import Collate, LengthGroupedSampler, TokenShardDataset

    if cfg.data.online:
        from pure.pretokenize import build_online_loader

        sampler, batches = build_online_loader(cfg, dist)
        if sampler.steps_per_epoch() == 0:
            raise ValueError(f"fewer HR images than one global batch of {sampler.global_batch}")
        return None, sampler, batches
    ds = TokenShardDataset(cfg.data.meta, cfg.data.max_seq_len)
    if len(ds) == 0:
        raise ValueError(f"no training records in {cfg.data.meta} ({ds.dropped} longer than max_seq_len)")
    sampler = LengthGroupedSampler(ds, cfg.data.batch_size, dist.world_size, dist.rank,
                                   cfg.optim.grad_accum, cfg.data.window_mult, cfg.run.seed)
    if sampler.steps_per_epoch() == 0:
        raise ValueError(f"{len(ds)} records is fewer than one global batch of {sampler.global_batch}")
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collate(cfg.data.pad_to_multiple),
                        num_workers=cfg.data.num_workers)
    return ds, sampler, loader


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def train(cfg, on_step=None) -> dict:
    """Run (or resume) training; returns {"losses": [...], "step": int, "run_dir": str}.

    `on_step(step, loss)` is called after every optimizer step (tests use it to send SIGTERM)."""
    from pure.parallelize import build_engine, fsdp2_meta_init

    global log
    dist = init_distributed(None if cfg.run.device == "auto" else cfg.run.device)
    log = get_logger("pure.train")  # again after init: non-zero ranks drop to WARNING
    seed_everything(cfg.run.seed, dist.rank)
    run_dir = Path(cfg.run.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ds, sampler, loader = build_loader(cfg, dist)
    spe = sampler.steps_per_epoch()
    total = cfg.max_steps or math.ceil(cfg.epochs * spe)
    warmup = int(round(cfg.optim.warmup_epochs * spe))

    seed_everything(cfg.run.seed, 0)  # same initial weights on every rank
    full_state = None
    meta_init = cfg.parallel.backend == "fsdp2" and fsdp2_meta_init(dist)
    if meta_init:
        # Every rank builds on meta; rank 0 alone materialises (random init or HF shards) on CPU,
        # and build_engine broadcasts its weights into the shards.
        if dist.is_main:
            full_state = PureLoss(build_lm(cfg, torch.device("cpu"))).state_dict()
        lm = build_lm(cfg, torch.device("meta"), meta=True)
    else:
        lm = build_lm(cfg, dist.device)
    seed_everything(cfg.run.seed, dist.rank)  # distinct per-rank streams from here on (dropout)
    root = PureLoss(lm, cfg.optim.z_loss_weight)
    if not meta_init:
        root = root.to(dist.device)
    eng = build_engine(root, lm, cfg.optim, cfg.parallel, dist, cfg.data.batch_size, full_state)
    del full_state
    step = 0
    latest = ckpt_io.latest_checkpoint(run_dir) if cfg.ckpt.resume else None
    if latest is not None:
        extra = eng.load(latest)
        step = int(extra["step"])
        log.info("resumed from %s at step %d", latest, step)
    sampler.epoch, sampler.consumed = divmod(step, spe)  # data position is a function of the step
    # Creating the iterator draws a base seed from the global RNG: do it before restoring RNGs so a
    # resumed run continues exactly the streams of the uninterrupted one (dropout masks included).
    it = iter(loader)
    if latest is not None:
        rngs = extra.get("rng") or []
        if len(rngs) == dist.world_size:  # same world size: continue every rank's streams exactly
            ckpt_io.set_rng_state(rngs[dist.rank])

    tracker = Tracker(cfg.run.wandb_project, run_dir, config=_plain(cfg),
                      mode=cfg.run.wandb_mode if cfg.log.wandb else "disabled")
    pre = ckpt_io.PreemptionHandler() if cfg.ckpt.save_on_sigterm else None
    n_flops_tok = None
    losses, t0, tok_acc, pad_acc, seen_acc = [], time.time(), 0, 0, 0
    use_amp = dist.device.type == "cuda" and cfg.parallel.autocast and cfg.parallel.backend != "deepspeed"
    eng.module.train()

    def save(s):
        extra = {"step": s, "rng": _gather_rng(dist), "sampler": sampler.state_dict()}
        eng.save(ckpt_io.checkpoint_path(run_dir, s), extra)
        if dist.is_main:
            ckpt_io.prune_checkpoints(run_dir, cfg.ckpt.keep)

    while step < total:
        eng.set_lr(lr_at(step, total, warmup, cfg.optim.lr, cfg.optim.min_lr))
        acc = {}
        for _ in range(cfg.optim.grad_accum):
            batch = next(it)
            ids, lab = batch["input_ids"].to(dist.device), batch["labels"].to(dist.device)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, stats = eng.forward(ids, lab)
            eng.backward(loss)
            for k, v in dict(stats, loss=loss.detach()).items():
                acc[k] = acc.get(k, 0.0) + float(v) / cfg.optim.grad_accum
            tok_acc += batch["n_tokens"]
            pad_acc += batch["n_pad"]
            seen_acc += ids.numel()
            n_flops_tok = n_flops_tok or flops_per_token(lm.config, ids.shape[1])
        gnorm = eng.step()
        step += 1
        loss_mean = float(all_reduce_mean(torch.tensor(acc["loss"])))
        losses.append(loss_mean)
        if step % cfg.log.every_steps == 0 or step == total:
            dt = max(time.time() - t0, 1e-9)
            tps = tok_acc / dt  # per rank
            ce_t, ce_i, zl = all_reduce_mean(torch.tensor([acc["ce_text"], acc["ce_image"], acc["z_loss"]])).tolist()
            metrics = {"loss": loss_mean, "ce_text": ce_t, "ce_image": ce_i, "z_loss": zl, "grad_norm": gnorm, "lr": eng.optimizer.param_groups[0]["lr"],
                       "tokens_per_s": tps * dist.world_size, "mfu": tps * n_flops_tok / cfg.log.peak_flops,
                       "padding_waste": pad_acc / max(seen_acc, 1), "epoch": step / spe}
            if torch.cuda.is_available():
                metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            tracker.log(metrics, step)
            log.info("step %d/%d loss %.4f (text %.3f image %.3f) gnorm %.3g lr %.3g tok/s %.0f MFU %.3f",
                     step, total, loss_mean, ce_t, ce_i, gnorm or 0, metrics["lr"],
                     metrics["tokens_per_s"], metrics["mfu"])
            t0, tok_acc, pad_acc, seen_acc = time.time(), 0, 0, 0
        if on_step is not None:
            on_step(step, loss_mean)
        preempted = pre is not None and bool(all_reduce_mean(torch.tensor(float(pre.requested))) > 0)
        if (cfg.ckpt.every_steps and step % cfg.ckpt.every_steps == 0) or preempted or step == total:
            save(step)
        if preempted:
            log.warning("pre-emption signal received: checkpointed step %d, exiting", step)
            break
    if cfg.export.hf_dir and step == total:
        export_hf(eng, lm, cfg.export.hf_dir, cfg.export.max_shard_size, dist)
    tracker.finish()
    if pre is not None:
        pre.restore()
    barrier()
    return {"losses": losses, "step": step, "run_dir": str(run_dir)}


def export_hf(eng, lm, out_dir, max_shard_size: str, dist) -> None:
    """Consolidated bf16 HF safetensors shards + config.json (official checkpoint layout)."""
    from pure.official import save_hf_shards

    sd = eng.full_model_state_dict()
    sd = {k[len("lm."):] if k.startswith("lm.") else k: v for k, v in sd.items()}
    if dist.is_main:
        save_hf_shards(sd, out_dir, max_shard_size=max_shard_size, config=lm.config,
                       vocabulary_map=getattr(lm.config, "vocabulary_map", None))
    barrier()


def main(cfg, on_step=None) -> dict:
    try:
        return train(cfg, on_step)
    finally:
        destroy_distributed()
