"""The VARSR training batch walk: HR crops -> on-device degradation -> (hr, lr, label) in [-1, 1].

1. ``common.data.HRTrainDataset`` reads and crops HR images and samples the degradation kernels in
   the DataLoader workers (CPU), every random choice keyed by ``(seed, epoch, index)``.
2. :class:`ResumableBatchSampler` deals the indices: one permutation per epoch seeded by
   ``(seed, epoch)``, padded to whole optimizer steps (``batch x ranks x grad_accum`` images),
   micro-batch ``b`` = permutation slice ``[b*G, (b+1)*G)`` (``G = batch x ranks``) split over ranks.
   What one optimizer step sees therefore does not depend on how its images are split into ranks and
   micro-batches (no step straddles two epochs), and resuming only needs the count of consumed
   micro-batches.
3. :class:`BatchMaker` moves the batch to the device, runs ``common.degradation.Degrader`` (LR
   resized back to the HR size, VARSR's ``resize_bak``) and maps both images to [-1, 1].

Labels (sr mode): 0 = positive HQ photo, 1 = negative (low-MOS) image; both go through the same
degradation (spec §6). C2I mode: one class per sub-folder of a root, label = folder index, no LR.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from common.data import HRTrainDataset, ImageSource, collate_train, write_bundled_dataset
from common.parallel import loader_kwargs


def bundled_root(cache_dir: str | Path | None = None) -> Path:
    """Folder holding the embedded scikit-image photos as PNGs (written once, then reused)."""
    base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "arsr"
    return write_bundled_dataset(base / "bundled_512") / "HR"


def class_sources(
    root: str | Path, ratio: float = 1.0, limit: int | None = None, holdout: int = 0
) -> list[ImageSource]:
    """C2I: one ImageSource per sub-folder of ``root`` (sorted), label = its index.

    ``holdout`` keeps the last N (natural-sorted) images of every class out of training, the
    official C2I validation split (50 per class, spec 7); it lists each folder once more.
    """
    from common.data import list_source

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"C2I class root is not a folder: {root}")
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not dirs:
        raise ValueError(f"C2I class root {root} has no class sub-folders")
    out = []
    for i, d in enumerate(dirs):
        src = ImageSource(root=str(d), kind="folder", label=i, ratio=ratio, limit=limit, name=f"class:{d.name}")
        if holdout > 0:
            n = len(list_source(src))
            if n <= holdout:
                raise ValueError(f"C2I class folder {d} has {n} images, not more than holdout={holdout}")
            src.limit = n - holdout
        out.append(src)
    return out


def check_c2i_classes(cfg) -> int:
    """C2I: the data must be one ``classes`` source whose sub-folder count + 1 (the null class)
    equals ``model.num_classes``; returns the number of real classes, else a one-line ValueError."""
    srcs = list(cfg.data.sources)
    if len(srcs) != 1 or srcs[0].kind != "classes":
        raise ValueError(
            "mode=c2i needs exactly one data source of kind 'classes' (one sub-folder per class), "
            f"got kinds {[s.kind for s in srcs]}"
        )
    n = len(class_sources(srcs[0].root))
    if cfg.model.num_classes != n + 1:
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes} does not fit the data: {srcs[0].root} has "
            f"{n} class folders, so num_classes must be {n + 1} (the last class is the null class)"
        )
    return n


def build_sources(data_cfg, cache_dir: str | Path | None = None) -> list[ImageSource]:
    """Turn ``DataConfig.sources`` into ``ImageSource``s (``bundled`` and ``classes`` expanded here)."""
    out: list[ImageSource] = []
    for s in data_cfg.sources:
        if s.kind == "classes":
            out += class_sources(s.root, s.ratio, s.limit, s.holdout)
            continue
        kind, root = s.kind, s.root
        if kind == "bundled":
            kind, root = "folder", str(bundled_root(cache_dir))
        if not root:
            raise ValueError(f"data source of kind {s.kind!r} needs a root")
        out.append(
            ImageSource(
                root=root,
                kind=kind,
                label=s.label,
                ratio=s.ratio,
                limit=s.limit,
                meta=s.meta,
                resize_shorter_to=s.resize_shorter_to,
            )
        )
    if not out:
        raise ValueError("data.sources is empty")
    return out


class EpochIndexed(Dataset):
    """Dataset adapter taking ``(epoch, index)`` keys so workers follow the sampler's epoch.

    ``HRTrainDataset`` keys its per-item randomness and its mixing plan on the epoch; DataLoader
    workers hold their own copy, so the epoch travels with each index instead of via ``set_epoch``
    in the main process.
    """

    def __init__(self, dataset: HRTrainDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class ResumableBatchSampler(Sampler):
    """Infinite per-rank batch sampler; see the module docstring for the order.

    ``start_micro_batch`` = micro-batches (per rank) already consumed: resuming skips them
    without touching the data. The last optimizer step of an epoch (``grad_accum`` micro-batches)
    is filled by wrapping around the permutation (official ``fill_last``), so every batch is full on
    every rank.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start_micro_batch: int = 0,
        grad_accum: int = 1,
    ):
        if num_items <= 0:
            raise ValueError("the training set is empty")
        self.n, self.b, self.world, self.rank = int(num_items), int(batch_size), int(world_size), int(rank)
        self.seed, self.start = int(seed), int(start_micro_batch)
        self.global_batch = self.b * self.world
        accum = max(1, int(grad_accum))
        self.batches_per_epoch = math.ceil(self.n / (self.global_batch * accum)) * accum  # whole steps

    def position(self, consumed: int) -> tuple[int, int]:
        """(epoch, batch within epoch) after ``consumed`` micro-batches."""
        return divmod(int(consumed), self.batches_per_epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, int(epoch), 0x5A4D]).permutation(self.n)
        total = self.batches_per_epoch * self.global_batch
        return np.resize(perm, total)  # np.resize repeats from the start to fill

    def __iter__(self):
        epoch, batch = self.position(self.start)
        while True:
            order = self.epoch_order(epoch)
            for b in range(batch, self.batches_per_epoch):
                lo = b * self.global_batch + self.rank * self.b
                yield [(epoch, int(i)) for i in order[lo : lo + self.b]]
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.batches_per_epoch


def build_train_dataset(cfg, cache_dir: str | Path | None = None) -> HRTrainDataset:
    """HRTrainDataset for a VARSRTrainConfig (kernels sampled in workers unless lq_mode=bicubic/c2i)."""
    d = cfg.data
    sampler = None
    if cfg.mode == "sr" and d.lq_mode == "degrade":
        from common.degradation.kernels import KernelSampler

        sampler = KernelSampler(cfg.degradation)
    return HRTrainDataset(
        build_sources(d, cache_dir),
        crop_size=d.crop_size,
        crop_mode=d.crop_mode,
        resize_shorter_to=d.resize_shorter_to,
        hflip=d.hflip,
        min_size=d.min_size,
        kernel_sampler=sampler,
        seed=cfg.run.seed,
    )


def build_train_loader(
    dataset: HRTrainDataset,
    cfg,
    world_size: int,
    rank: int,
    start_micro_batch: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[DataLoader, ResumableBatchSampler]:
    """Per-rank DataLoader; workers/pinned memory/prefetch per ``cfg.data`` (``common.parallel.loader_kwargs``)."""
    d = cfg.data
    sampler = ResumableBatchSampler(
        len(dataset), d.batch_size, world_size, rank, cfg.run.seed, start_micro_batch, cfg.optim.grad_accum
    )
    kw = loader_kwargs(d.num_workers, device, d.prefetch_factor, d.persistent_workers, d.pin_memory)
    # A private generator: creating the iterator must not draw from the global torch RNG,
    # otherwise a resumed run's RNG stream would be one draw off the uninterrupted run's.
    gen = torch.Generator().manual_seed(cfg.run.seed * 1000 + rank)
    return DataLoader(
        EpochIndexed(dataset), batch_sampler=sampler, collate_fn=collate_train, generator=gen, **kw
    ), sampler


def _kernels_to(kernels: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in kernels.items()}


def bicubic_lq(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Deterministic LR for ablations/tests: antialiased bicubic x1/scale, back up, 8-bit quantised."""
    h, w = hr.shape[-2:]
    lq = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(lq, size=(h, w), mode="bicubic", align_corners=False)
    return (up.clamp(0, 1) * 255).round() / 255


class BatchMaker:
    """Device half of the batch walk: collated CPU batch -> (hr, lr, label) on ``device`` in [-1, 1].

    ``lr`` is at the HR size (the model resizes nothing; the LR prefix encoder expects 512² in
    training). In C2I mode ``lr`` is None.
    """

    def __init__(self, cfg, device: torch.device):
        self.mode, self.lq_mode, self.device = cfg.mode, cfg.data.lq_mode, device
        self.scale = int(cfg.degradation.scale)
        self.degrader = None
        if self.mode == "sr" and self.lq_mode == "degrade":
            from common.degradation.pipeline import Degrader

            if not cfg.degradation.resize_back:
                raise ValueError("VARSR training needs degradation.resize_back=true (LR at HR size)")
            self.degrader = Degrader(cfg.degradation)
        elif self.lq_mode not in ("degrade", "bicubic"):
            raise ValueError(f"data.lq_mode must be degrade | bicubic, got {self.lq_mode!r}")

    def __call__(self, batch: dict, generator: torch.Generator | None = None):
        hr = batch["hr"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        if self.mode == "c2i":
            return hr * 2 - 1, None, label
        if self.degrader is not None:
            res = self.degrader(hr, _kernels_to(batch["kernels"], self.device), generator=generator)
            hr, lq = res.gt, res.lq_up
        else:
            lq = bicubic_lq(hr, self.scale)
        return hr * 2 - 1, lq * 2 - 1, label


def step_generator(device: torch.device, seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """Degradation randomness keyed by (seed, rank, step, micro): resume-exact without saving it."""
    g = torch.Generator(device=device)
    mixed = np.random.SeedSequence([int(seed), int(rank), int(step), int(micro)]).generate_state(1, np.uint64)[0]
    g.manual_seed(int(mixed) & ((1 << 63) - 1))
    return g


def make_val_pairs(cfg, device: torch.device):
    """(hr, lr) in [0, 1], both (N, 3, S, S) at the crop size; LR from the training degradation
    with a fixed per-image seed so every validation sees the same inputs."""
    from common.data import read_image, to_tensor
    from common.data.sources import walk_images
    from common.data.train_sets import crop_image

    v, d = cfg.validation, cfg.data
    root = v.root or str(bundled_root())
    paths = walk_images(root)[: v.num_images]
    if not paths:
        raise ValueError(f"validation.root {root} holds no images")
    rng = np.random.default_rng(v.seed)
    hr = torch.stack(
        [to_tensor(crop_image(read_image(p), d.crop_size, "resize_center", rng, d.resize_shorter_to)) for p in paths]
    )
    if d.lq_mode == "bicubic":
        lr = bicubic_lq(hr, cfg.degradation.scale)
    else:
        from common.degradation.pipeline import degrade_image

        lr = torch.stack([degrade_image(h, cfg.degradation, v.seed + i).lq_up for i, h in enumerate(hr)])
    return hr.to(device), lr.to(device)
