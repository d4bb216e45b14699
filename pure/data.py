"""Token shards on disk, the dataset over them, and PURE's length-bucketing batch sampler.

Shard format (ours; never pickle): `<name>.safetensors` with three tensors
    tokens  int32 (sum of lengths,)   all records' token ids, concatenated
    mask    uint8 (sum of lengths,)   1 where the label equals the token (supervised), 0 = -100
    offsets int64 (n + 1,)            record i is [offsets[i], offsets[i+1])
plus `<name>.jsonl`, one line per record {"file", "idx", "len", "id", "type"}, and a merged
`record.json` list over all shards. PURE labels are either -100 or the token itself, so a mask
stores them exactly (the official-pickle converter checks this).

Data YAML (official): `META: [{path: record.json, ratio: 1.0, type: "sr"}]`; `ratio` subsamples
that entry's records each epoch (entries sharing a `type` keep their own ratios), `type` keeps
batches homogeneous.

Sampler (official xllmx semantics): per epoch, sort records by length, shuffle inside windows
of `global_batch * window_mult` consecutive records, cut into global batches, shuffle the
batches; rank r takes micro-batch slices of every global batch. Similar lengths end up together,
so right padding wastes little (`padding_waste` reports how much). The position inside the
epoch is the number of global batches already consumed -> exact resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pure.sequence import IGNORE, pad_batch


# ------------------------------------------------------------------------------ shard format
def write_shard(path: str | Path, records: list[dict]) -> list[dict]:
    """Write records {"token", "label", "id", "type"?} as `path`.safetensors + `path`.jsonl (atomic).

    Returns the index entries. Labels must be -100 or equal to the token at each position.
    """
    from common.checkpoint import atomic_write, save_safetensors_atomic

    path = Path(path)
    toks, masks, offs, index = [], [], [0], []
    for i, r in enumerate(records):
        t = np.asarray(r["token"], dtype=np.int64)
        l = np.asarray(r["label"], dtype=np.int64)
        if t.shape != l.shape:
            raise ValueError(f"record {r.get('id')!r}: token/label lengths differ ({t.size} vs {l.size})")
        m = l != IGNORE
        if not np.array_equal(l[m], t[m]):
            raise ValueError(f"record {r.get('id')!r}: labels must be -100 or equal to the token")
        toks.append(t.astype(np.int32))
        masks.append(m.astype(np.uint8))
        offs.append(offs[-1] + t.size)
        index.append(
            {
                "file": path.name + ".safetensors",
                "idx": i,
                "len": int(t.size),
                "id": str(r.get("id", i)),
                "type": r.get("type") or "default",
            }
        )
    tensors = {
        "tokens": torch.from_numpy(np.concatenate(toks) if toks else np.zeros(0, np.int32)),
        "mask": torch.from_numpy(np.concatenate(masks) if masks else np.zeros(0, np.uint8)),
        "offsets": torch.tensor(offs, dtype=torch.int64),
    }
    save_safetensors_atomic(tensors, path.with_name(path.name + ".safetensors"))
    lines = "".join(json.dumps(e) + "\n" for e in index).encode()
    atomic_write(path.with_name(path.name + ".jsonl"), lambda f: f.write(lines))
    return index


def merge_indices(out_dir: str | Path, name: str = "record.json") -> Path:
    """Merge every `*.jsonl` shard index in out_dir into one record list (paths relative to out_dir)."""
    from common.checkpoint import atomic_write

    out_dir = Path(out_dir)
    recs = []
    for idx in sorted(out_dir.glob("*.jsonl")):
        if not idx.with_suffix(".safetensors").exists():
            continue  # an index whose shard never finished writing
        recs.extend(json.loads(l) for l in idx.read_text().splitlines() if l.strip())
    blob = json.dumps(recs).encode()
    return atomic_write(out_dir / name, lambda f: f.write(blob))


# ------------------------------------------------------------------------------ dataset
class TokenShardDataset(Dataset):
    """Records listed by a data YAML (or record.json paths); item -> (tokens, labels) lists.

    Records longer than `max_seq_len` are dropped (counted in `self.dropped`) rather than
    truncated: a truncated PURE record loses its HQ image end and teaches the wrong length.
    """

    def __init__(self, meta: str | Path | list[dict], max_seq_len: int = 11776):
        entries = _read_meta(meta)
        self.records: list[dict] = []
        self.dropped = 0
        for source, ent in enumerate(entries):
            rec_path = Path(ent["path"])
            if not rec_path.is_file():
                raise FileNotFoundError(f"record list not found: {rec_path}")
            recs = json.loads(rec_path.read_text())
            for r in recs:
                if int(r["len"]) > max_seq_len:
                    self.dropped += 1
                    continue
                ratio = ent.get("ratio")
                r = dict(
                    r,
                    root=str(rec_path.parent),
                    type=ent.get("type") or r.get("type") or "default",
                    source=source,  # the META entry: `ratio` subsamples per entry, not per type
                    ratio=1.0 if ratio is None else float(ratio),
                )
                self.records.append(r)
        self.lengths = np.array([int(r["len"]) for r in self.records], dtype=np.int64)
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _shard(self, file: str):
        # One safe_open handle per shard per worker process (memory-mapped, no unpickling).
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def __getitem__(self, i: int):
        r = self.records[i]
        f = self._shard(str(Path(r["root"]) / r["file"]))
        a, b = f.get_slice("offsets")[int(r["idx"]) : int(r["idx"]) + 2].tolist()
        tok = f.get_slice("tokens")[a:b].long()
        mask = f.get_slice("mask")[a:b].bool()
        lab = torch.where(mask, tok, torch.full_like(tok, IGNORE))
        return tok.tolist(), lab.tolist()

    def __getstate__(self):  # file handles do not cross process boundaries
        d = dict(self.__dict__)
        d["_handles"] = {}
        return d


def _read_meta(meta) -> list[dict]:
    if isinstance(meta, (list, tuple)):
        return [m if isinstance(m, dict) else {"path": str(m)} for m in meta]
    p = Path(meta)
    if p.suffix == ".json":
        return [{"path": str(p)}]
    from omegaconf import OmegaConf

    if not p.is_file():
        raise FileNotFoundError(f"data config not found: {p}")
    cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    if not isinstance(cfg, dict) or "META" not in cfg:
        raise ValueError(f"{p}: data config needs a top-level META list of {{path, ratio, type}}")
    out = []
    for m in cfg["META"]:
        path = Path(m["path"])
        if not path.is_absolute() and (p.parent / path).exists():
            path = p.parent / path  # relative to the YAML; otherwise relative to the working dir (official)
        out.append(dict(m, path=str(path)))
    return out


# ------------------------------------------------------------------------------ sampler
class LengthGroupedSampler:
    """Yields this rank's micro-batches (lists of indices); official length-window semantics.

    global batch G = micro_batch * world_size * grad_accum. State = (epoch, consumed global batches).
    """

    def __init__(
        self,
        dataset: TokenShardDataset,
        micro_batch: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        window_mult: int = 500,
        seed: int = 0,
    ):
        self.ds, self.mb, self.world, self.rank = dataset, micro_batch, world_size, rank
        self.accum, self.window_mult, self.seed = grad_accum, window_mult, seed
        self.global_batch = micro_batch * world_size * grad_accum
        self.epoch, self.consumed = 0, 0

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        recs = self.ds.records
        by_type: dict[str, list[int]] = {}
        for i, r in enumerate(recs):
            by_type.setdefault(r["type"], []).append(i)
        batches = []
        for t in sorted(by_type):
            idx = self._subsample(np.array(by_type[t], dtype=np.int64), rng)
            idx = idx[np.argsort(self.ds.lengths[idx], kind="stable")]
            win = self.global_batch * self.window_mult
            for s in range(0, len(idx), win):
                rng.shuffle(idx[s : s + win])
            n_full = len(idx) // self.global_batch  # drop the ragged tail: every rank must step together
            batches += [idx[k * self.global_batch : (k + 1) * self.global_batch].tolist() for k in range(n_full)]
        order = rng.permutation(len(batches))
        return [batches[k] for k in order]

    def _subsample(self, idx: np.ndarray, rng) -> np.ndarray:
        """This epoch's records of one type group: each META entry's records subsampled by that
        entry's own `ratio` (official: per data-config entry), the entries then pooled."""
        recs = self.ds.records
        sources = np.array([recs[i].get("source", 0) for i in idx], dtype=np.int64)
        keep = []
        for src in np.unique(sources):
            part = idx[sources == src]
            ratio = recs[part[0]]["ratio"]
            if ratio < 1.0:  # per-epoch subsample
                n = int(round(len(part) * ratio))
                part = rng.choice(part, size=max(1, n) if ratio > 0 else 0, replace=False)
            keep.append(part)
        return np.concatenate(keep) if keep else idx

    def steps_per_epoch(self) -> int:
        return len(self.global_batches(0))

    def __iter__(self):
        """Micro-batches for this rank from the current position; advances `consumed` per global batch."""
        while True:
            gbs = self.global_batches(self.epoch)
            while self.consumed < len(gbs):
                gb = gbs[self.consumed]
                per_rank = gb[self.rank * self.mb * self.accum : (self.rank + 1) * self.mb * self.accum]
                for k in range(self.accum):
                    yield per_rank[k * self.mb : (k + 1) * self.mb]
                self.consumed += 1
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, s: dict) -> None:
        if int(s["global_batch"]) != self.global_batch:
            # A different global batch makes the consumed count meaningless; restart the epoch.
            s = dict(s, consumed=0)
        self.epoch, self.consumed = int(s["epoch"]), int(s["consumed"])


def padding_waste(lengths: list[int], pad_to_multiple: int = 1) -> float:
    """Fraction of a padded batch that is padding."""
    T = math.ceil(max(lengths) / pad_to_multiple) * pad_to_multiple
    return 1.0 - sum(lengths) / (T * len(lengths))


class Collate:
    """Right-pad a list of (tokens, labels) into tensors + padding statistics."""

    def __init__(self, pad_to_multiple: int = 1):
        self.pad_to_multiple = pad_to_multiple

    def __call__(self, items):
        ids, lab, n_pad = pad_batch(items, self.pad_to_multiple)
        return {"input_ids": ids, "labels": lab, "n_pad": n_pad, "n_tokens": int(sum(len(t) for t, _ in items))}


# ------------------------------------------------------------------------------ training loader
def build_train_loader(cfg, dist):
    """(dataset, sampler, iterable of batches) for `cfg.data`: pre-tokenised shards, or online
    degrade + VQ-encode (`data.online`, dataset None). Too little data for one global batch is a
    one-line error."""
    from torch.utils.data import DataLoader

    if cfg.data.online:
        from pure.pretokenize import build_online_loader

        sampler, batches = build_online_loader(cfg, dist)
        if sampler.steps_per_epoch() == 0:
            raise ValueError(f"fewer HR images than one global batch of {sampler.global_batch}")
        return None, sampler, batches
    ds = TokenShardDataset(cfg.data.meta, cfg.data.max_seq_len)
    if len(ds) == 0:
        raise ValueError(f"no training records in {cfg.data.meta} ({ds.dropped} longer than max_seq_len)")
    sampler = LengthGroupedSampler(
        ds, cfg.data.batch_size, dist.world_size, dist.rank, cfg.optim.grad_accum, cfg.data.window_mult, cfg.run.seed
    )
    if sampler.steps_per_epoch() == 0:
        raise ValueError(f"{len(ds)} records is fewer than one global batch of {sampler.global_batch}")
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=Collate(cfg.data.pad_to_multiple),
        **data_loader_kwargs(cfg.data, dist.device),
    )
    return ds, sampler, loader


def data_loader_kwargs(data_cfg, device) -> dict:
    """Workers / pinned memory / prefetch from `cfg.data` (common.parallel.loader_kwargs)."""
    from common.parallel import loader_kwargs

    return loader_kwargs(
        data_cfg.num_workers, device, data_cfg.prefetch_factor, data_cfg.persistent_workers, data_cfg.pin_memory
    )
