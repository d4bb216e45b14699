"""Pre-tokenisation of PURE training pairs: HR crop -> degrade -> VQ encode LQ/HQ -> sequences -> shards.

Pipeline per batch (spec pure.md §4, common.md §1.7 "PURE"): `common.data.HRTrainDataset` gives
a random `target_size` HR crop plus per-image blur kernels; `common.degradation.Degrader`
makes the LQ (H/4, SeeSR's offline `realesrgan` preset, USM'd GT as the target); the LQ is
bicubic-resized back to `target_size` and 8-bit quantised (PURE's README feeds a 512 LQ);
both go through the LlamaGen VQ; `pure.sequence.build_training_example` lays out the tokens with
the degradation sentence (from the sampled params, or a user score file) and the caption.

Offline: `pretokenize(cfg, rank, world)` gives each rank/worker the items i ≡ rank (mod world),
writes shards of `shard_size` records (`pure.data.write_shard`) and records finished shards in
`progress_r<rank>.json`; a restart skips them, and every item's randomness is a function of
(seed, item index), so a resumed run writes byte-identical shards. Rank 0 merges the indices
into `record.json`. Online: `OnlinePairs` does the same per training batch on the device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from common.logging import get_logger
from pure.captions import load_captions
from pure.data import merge_indices, write_shard
from pure.degradation_text import DegradationEstimator, ParamEstimator, ScoreFileEstimator
from pure.sequence import build_training_example

log = get_logger("pure.pretokenize")


class PairEncoder:
    """(HR batch, kernels) -> list of records {token, label, id, type, blur, noise, degradation}."""

    def __init__(
        self,
        degrader,
        vq,
        tok,
        captions: dict | None = None,
        estimator: DegradationEstimator | None = None,
        max_seq_len: int = 11776,
        record_type: str = "sr",
    ):
        self.degrader, self.vq, self.tok = degrader, vq, tok
        self.captions = captions or {}
        self.estimator = estimator or ParamEstimator()
        self.max_seq_len, self.record_type = max_seq_len, record_type
        self.rejected = 0  # records longer than max_seq_len (rejected instead of truncated)

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, kernels: dict, ids: list[str], generator=None):
        """``generator``: one per image (`item_generators`: an image's LQ is then the same in any batch,
        on any rank, at any world size), or one for the whole batch, or None."""
        size = hr.shape[-2:]
        if isinstance(generator, (list, tuple)) and not self.degrader.cfg.per_batch_compat:
            kp = kernels.get("params") or [None] * len(generator)
            params = [self.degrader.sample_params(1, g, None if p is None else [p])[0] for g, p in zip(generator, kp)]
            res = self.degrader.apply(hr, kernels, params)
        else:  # per_batch_compat: the official batch-level draws, from the batch's first image's generator
            res = self.degrader(hr, kernels, generator[0] if isinstance(generator, (list, tuple)) else generator)
        lq = (
            res.lq_up
            if res.lq_up is not None
            else F.interpolate(res.lq, size=size, mode="bicubic", align_corners=False)
        )
        lq = torch.round(lq.clamp(0, 1) * 255) / 255  # an 8-bit image, as the README's resized LQ file
        dt = next(self.vq.parameters()).dtype
        lq_codes = self.vq.encode_codes((lq * 2 - 1).to(dt)).cpu()
        hq_codes = self.vq.encode_codes((res.gt.clamp(0, 1) * 2 - 1).to(dt)).cpu()
        out = []
        for i, image_id in enumerate(ids):
            sc = self.estimator(lq=lq[i], image_id=image_id, params=res.params[i])
            tokens, labels = build_training_example(
                lq_codes[i], hq_codes[i], sc.sentence(), self.captions.get(image_id, ""), self.tok
            )
            if len(tokens) > self.max_seq_len:
                self.rejected += 1
                continue
            out.append(
                {
                    "token": tokens,
                    "label": labels,
                    "id": image_id,
                    "type": self.record_type,
                    "blur": sc.blur,
                    "noise": sc.noise,
                }
            )
        return out


def item_generators(seed: int, indices) -> list[torch.Generator]:
    """One degradation generator per item, from (seed, item index) alone."""
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i)) for i in indices]


def image_id(path: str, roots: list[str]) -> str:
    """Caption/score key of an image: its path relative to its source root, without extension."""
    p = Path(path)
    for r in roots:
        try:
            return str(p.relative_to(r).with_suffix(""))
        except ValueError:
            continue
    return p.stem


def build_components(cfg, device: torch.device):
    """Dataset, PairEncoder (degrader, VQ, tokenizer, captions, estimator) from a PretokenizeConfig."""
    from common.data.sources import ImageSource
    from common.data.train_sets import HRTrainDataset
    from common.degradation.kernels import KernelSampler
    from common.degradation.pipeline import Degrader
    from common.degradation.presets import get_preset
    from pure.model.vq import VQModel, vq_config
    from pure.tokenizer import ImageCodeMap, TextTokenizer, build_test_tokenizer

    roots = [_resolve_images(p, cfg.out_dir) for p in cfg.images]
    if not roots:
        raise ValueError("pretokenize: no image folders given (images: [...])")
    deg_cfg = get_preset(cfg.degradation, scale=cfg.lq_scale)  # LQ = HR / lq_scale
    ds = HRTrainDataset(
        [ImageSource(root=r) for r in roots],
        crop_size=cfg.target_size,
        crop_mode="random",
        kernel_sampler=KernelSampler(deg_cfg),
        seed=cfg.seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # a random VQ (no checkpoint) must be the same in every worker/resume
        vq = VQModel(vq_config("ds8"))
    if cfg.vq_ckpt:
        from pure.official import load_llamagen_vq

        load_llamagen_vq(vq, cfg.vq_ckpt)
    else:
        log.warning("no vq_ckpt: using a randomly initialised VQ (plumbing/tests only)")
    vq = vq.to(device).eval()
    code_map = None
    if cfg.vocab_map:
        code_map = ImageCodeMap.from_tokenizer_json(cfg.vocab_map)
    tok_path = cfg.tokenizer or build_test_tokenizer(Path(cfg.out_dir) / "test_tokenizer")
    tok = TextTokenizer.from_file(tok_path, code_map=code_map)
    estimator = ScoreFileEstimator(cfg.degradation_scores) if cfg.degradation_scores else ParamEstimator()
    captions = load_captions(cfg.captions) if cfg.captions else {}
    enc = PairEncoder(Degrader(deg_cfg), vq, tok, captions, estimator, cfg.max_seq_len)
    return ds, enc, [str(r) for r in roots]


def _resolve_images(p: str, out_dir: str) -> Path:
    """'bundled' -> write the bundled CC0 photos once (quick runs / tests); else a folder."""
    if p == "bundled":
        from common.data.bundled import write_bundled_dataset

        return Path(write_bundled_dataset(Path(out_dir) / "bundled", size=512))
    if not Path(p).is_dir():
        raise FileNotFoundError(f"image folder not found: {p}")
    return Path(p)


def prepare_images(cfg):
    """Resolve special image entries ('bundled') once, before workers start, so parallel workers
    never write the same files; returns a copy of cfg with plain folder paths."""
    import dataclasses

    return dataclasses.replace(cfg, images=[str(_resolve_images(p, cfg.out_dir)) for p in cfg.images])


def _progress_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"progress_r{rank:03d}.json"


def pretokenize(cfg, rank: int = 0, world: int = 1, batch_size: int = 4, limit: int | None = None) -> dict:
    """Process this rank's share of the items; resumable. Returns counts for this rank."""
    from common.checkpoint import atomic_write_bytes
    from common.data.train_sets import collate_train

    if cfg.target_size != 512:
        log.warning(
            "target_size %d: PURE trains at 512 (768 would exceed max_seq_len with two images)", cfg.target_size
        )
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds, enc, roots = build_components(cfg, device)
    n_items = min(len(ds), limit) if limit else len(ds)
    mine = list(range(rank, n_items, world))
    n_shards = math.ceil(len(mine) / cfg.shard_size)
    prog_path = _progress_path(out_dir, rank)
    done = set(json.loads(prog_path.read_text())["done"]) if prog_path.is_file() else set()
    written = 0
    for k in range(n_shards):
        name = f"shard_r{rank:03d}_{k:05d}"
        if name in done:
            continue
        items = mine[k * cfg.shard_size : (k + 1) * cfg.shard_size]
        records = []
        for s in range(0, len(items), batch_size):
            idx = items[s : s + batch_size]
            batch = collate_train([ds[i] for i in idx])
            # One generator per item: its record depends on (seed, index) only, not on the world size or
            # batch_size that decided which items share its batch (and a resume writes identical shards).
            ids = [image_id(p, roots) for p in batch["path"]]
            records += enc(batch["hr"].to(device), batch["kernels"], ids, item_generators(cfg.seed, idx))
        write_shard(out_dir / name, records)
        written += len(records)
        done.add(name)
        blob = json.dumps({"done": sorted(done), "n_shards": n_shards}).encode()
        atomic_write_bytes(prog_path, blob)
        log.info("rank %d: wrote %s (%d records)", rank, name, len(records))
    if enc.rejected:
        log.warning("rank %d: rejected %d records longer than %d tokens", rank, enc.rejected, cfg.max_seq_len)
    return {"written": written, "rejected": enc.rejected, "shards": n_shards}


def finalize(out_dir) -> Path:
    """Merge every shard index into record.json (run once, after all ranks finished)."""
    return merge_indices(out_dir)


def convert_official(record_json, out_dir, trusted: bool = False, shard_size: int = 1000) -> Path:
    """Convert official PURE pre-tokenised pickles ({"token", "label", "id"} per file, listed by
    a record JSON of {"file", "len", "id"}) to our shards. Unpickling executes code: only with
    `trusted=True`, for files you produced yourself or otherwise trust."""
    if not trusted:
        raise PermissionError(
            f"{record_json}: official records are pickles; pass trusted=True (--trusted) only if you trust these files"
        )
    import pickle

    rec_path = Path(record_json)
    entries = json.loads(rec_path.read_text())
    out_dir = Path(out_dir)
    records, k = [], 0
    for e in entries:
        f = Path(e["file"])
        f = f if f.is_absolute() else rec_path.parent / f
        with open(f, "rb") as fh:
            # one of the repo's two trusted-only unpickling sites (the other: varsr.official.convert)
            item = pickle.load(fh)  # noqa: S301 (guarded by trusted=True above)
        records.append(
            {
                "token": item["token"],
                "label": item["label"],
                "id": str(item.get("id", e.get("id"))),
                "type": e.get("type"),
            }
        )
        if len(records) == shard_size:
            write_shard(out_dir / f"official_{k:05d}", records)
            records, k = [], k + 1
    if records:
        write_shard(out_dir / f"official_{k:05d}", records)
    return merge_indices(out_dir)


class OnlinePairs:
    """Online mode: wraps a DataLoader of `collate_train` batches and yields padded token batches
    made on the training device (degrade + VQ encode per batch, nothing written to disk)."""

    def __init__(
        self, loader, encoder: PairEncoder, device, roots: list[str], pad_to_multiple: int = 64, seed: int = 0
    ):
        self.loader, self.enc, self.device, self.roots = loader, encoder, device, roots
        self.pad_to_multiple, self.seed = pad_to_multiple, seed

    def __iter__(self):
        # Create the DataLoader iterator now (it draws a seed from the global RNG), not lazily at the
        # first batch: train.py restores RNG streams right after iter() for exact resumes.
        return self._batches(iter(self.loader))

    def _batches(self, it):
        from pure.data import Collate

        collate = Collate(self.pad_to_multiple)
        for batch in it:
            gens = item_generators(self.seed, batch["index"].tolist())  # as offline: per item
            ids = [image_id(p, self.roots) for p in batch["path"]]
            # Degradation + VQ encoding run batched on the training device (kernels follow `hr` there).
            recs = self.enc(batch["hr"].to(self.device, non_blocking=True), batch["kernels"], ids, gens)
            if recs:
                yield collate([(r["token"], r["label"]) for r in recs])


class _UniformRecords:
    """Length-free stand-in so online mode reuses LengthGroupedSampler (global batches, rank slices,
    per-epoch shuffles, position = step) over HR image indices."""

    def __init__(self, n: int):
        import numpy as np

        self.records = [{"type": "sr", "ratio": 1.0}] * n
        self.lengths = np.zeros(n, dtype=np.int64)


def build_online_loader(cfg, dist):
    """(sampler, iterable of padded batches) for `data.online=true`, from the `pretokenize` block."""
    from torch.utils.data import DataLoader

    from common.data.train_sets import collate_train
    from pure.data import LengthGroupedSampler, data_loader_kwargs

    ds, enc, roots = build_components(cfg.pretokenize, dist.device)
    enc.max_seq_len = cfg.data.max_seq_len
    sampler = LengthGroupedSampler(
        _UniformRecords(len(ds)),
        cfg.data.batch_size,
        dist.world_size,
        dist.rank,
        cfg.optim.grad_accum,
        cfg.data.window_mult,
        cfg.run.seed,
    )
    loader = DataLoader(
        ds, batch_sampler=sampler, collate_fn=collate_train, **data_loader_kwargs(cfg.data, dist.device)
    )
    return sampler, OnlinePairs(loader, enc, dist.device, roots, cfg.data.pad_to_multiple, cfg.pretokenize.seed)
