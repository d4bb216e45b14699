"""PURE's work and randomness split over ranks: which rank gets which record, image or item, and what.

Ranks are faked (two ranks of a world of 2 run one after the other in this process, with
``common.dist`` answering for the rank), and the expected split is written out from the rule the
docs state (items i = rank mod world; rank r takes its own contiguous slice of every global batch),
never read from the code under test. Bugs these catch:

- the length-grouped sampler slicing ranks by micro-batch while accumulating (rank r's second
  micro-batch is rank r+1's first: records seen twice per step, others never);
- a folder run where every rank restores rank 0's share, skips another rank's images, or seeds an
  image by its position in the rank's list instead of its global index;
- pre-tokenised records that depend on how many ranks wrote them (an item's degradation drawn from
  a generator shared by its batch, whose members change with the world size).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from common.data.io import read_image, write_image
from pure.data import LengthGroupedSampler


class _Records:
    """A record list with distinct lengths (records[i] has length 10 + i) of one type."""

    def __init__(self, n: int):
        self.records = [{"type": "sr", "ratio": 1.0} for _ in range(n)]
        self.lengths = np.arange(10, 10 + n, dtype=np.int64)


@pytest.mark.parametrize("world,accum,mb", [(2, 2, 2), (4, 3, 1), (2, 1, 3)])
def test_length_sampler_ranks_split_each_global_batch(world, accum, mb):
    """Per optimizer step, the micro-batches of all ranks are the step's global batch, each record once,
    rank r holding the r-th contiguous slice; the same steps as one rank accumulating world x accum."""
    ds = _Records(120)
    samplers = [LengthGroupedSampler(ds, mb, world, r, accum, window_mult=2, seed=5) for r in range(world)]
    alone = LengthGroupedSampler(ds, mb, 1, 0, accum * world, window_mult=2, seed=5)
    its, it1 = [iter(s) for s in samplers], iter(alone)
    g = mb * accum * world
    steps = alone.steps_per_epoch()
    assert steps == 120 // g and all(s.steps_per_epoch() == steps for s in samplers)
    seen = []
    for _ in range(steps + 2):  # into the next epoch
        per_rank = [[i for _ in range(accum) for i in next(it)] for it in its]
        one = [i for _ in range(accum * world) for i in next(it1)]
        assert all(len(p) == mb * accum for p in per_rank)
        union = [i for p in per_rank for i in p]
        assert len(set(union)) == g  # no record on two ranks (or twice on one)
        assert union == one  # rank r = the r-th slice of the global batch a single process would take
        seen += union
    first_epoch = seen[: steps * g]
    assert len(set(first_epoch)) == steps * g  # an epoch never repeats a record


def _stub_pure(monkeypatch, seeds: list):
    """Loaders and restorer replaced: the restored image is the LR's brightness, x4 in size."""
    import pure.evaluate as pe

    class Restorer:
        scale = None

        def restore(self, imgs, generator):
            seeds.append(generator.initial_seed())
            out = []
            for img in imgs:
                h, w = img.shape[:2]
                image = torch.full((3, 4 * h, 4 * w), float(img.mean()) / 255)
                rec = {"ok": True, "seconds": 0.0, "forwards": 1, "new_tokens": 1}
                out.append(SimpleNamespace(image=image, ok=True, record=lambda rec=rec: rec))
            return out

    monkeypatch.setattr(pe, "load_components", lambda cfg, device: (None, None, None))
    monkeypatch.setattr(pe, "build_restorer", lambda cfg, model, vq, tok, log=None: Restorer())


def test_folder_run_splits_images_by_rank(tmp_path, monkeypatch):
    import common.dist as cdist
    import pure.evaluate as pe
    from common.config import compose_config, to_dataclass

    lr_dir = tmp_path / "LR"
    levels = {"a": 20, "b": 120, "c": 220, "d": 70, "e": 160}
    for name, v in levels.items():
        write_image(lr_dir / f"{name}.png", np.full((6, 5, 3), v, np.uint8))
    seeds: list[int] = []
    _stub_pure(monkeypatch, seeds)
    pe.register_configs()
    for rank in (1, 0):  # two ranks of a world of 2, one after the other
        monkeypatch.setattr(cdist, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(cdist, "get_world_size", lambda: 2)
        monkeypatch.setattr(cdist, "is_main", lambda r=rank: r == 0)
        monkeypatch.setattr(cdist, "barrier", lambda: None)
        monkeypatch.setattr(cdist, "all_gather_object", lambda obj: [obj])
        out = tmp_path / f"run{rank}" / "sr"
        args = ["model=tiny", "ckpt_dir=null", "vq_ckpt=null", "tokenizer=null", "metrics=[]", "device=cpu"]
        args += [f"lr_dir={lr_dir}", f"out_dir={out}", "seed=100"]
        seeds.clear()
        pe.run_restore(to_dataclass(pe.PureSampleConfig, compose_config("pure", "sample", args)))
        # sorted names a..e -> indices 0..4; rank r takes indices r, r + 2, ... with seed 100 + index
        mine = ["a", "c", "e"] if rank == 0 else ["b", "d"]
        assert sorted(p.stem for p in out.glob("*.png")) == mine
        assert sorted(p.stem for p in out.glob("*.json") if p.stem in levels) == mine  # (+ run files on rank 0)
        assert seeds == [100 + "abcde".index(n) for n in mine]
        for name in mine:
            img = read_image(out / f"{name}.png")
            assert img.shape == (24, 20, 3) and abs(int(img.mean()) - levels[name]) <= 1, name
            assert json.loads((out / f"{name}.json").read_text())["name"] == name


class PoolVQ(nn.Module):
    """Stand-in VQ: the code of an 8x8 cell is its quantised mean (any change of the LQ shows)."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode_codes(self, x):
        cells = torch.nn.functional.avg_pool2d(x.float().mean(1, keepdim=True), 8)[:, 0]
        return ((cells + 1) / 2 * 8000).round().long().clamp(0, 8191)


def test_pretokenized_records_do_not_depend_on_the_world_size(tmp_path, monkeypatch, test_tokenizer_path):
    import pure.pretokenize as pt
    from pure.config import PretokenizeConfig
    from pure.data import TokenShardDataset

    images = tmp_path / "hr"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    monkeypatch.setattr("pure.model.vq.VQModel", lambda config: PoolVQ())  # what build_components builds
    by_world = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        cfg = PretokenizeConfig(
            out_dir=str(out), images=[str(images)], target_size=32, shard_size=2,
            tokenizer=str(test_tokenizer_path), device="cpu", seed=3, lq_scale=4,
        )  # fmt: skip
        for rank in range(world):
            pt.pretokenize(cfg, rank, world, batch_size=2)
        ds = TokenShardDataset(pt.finalize(out))
        by_world[world] = {r["id"]: ds[i] for i, r in enumerate(ds.records)}
        if world == 2:  # items i = rank mod 2, in sorted file order
            shard_ids = {
                rank: sorted(json.loads(line)["id"] for p in out.glob(f"shard_r{rank:03d}_*.jsonl") for line in
                             p.read_text().splitlines())
                for rank in range(2)
            }  # fmt: skip
            assert shard_ids == {0: ["img0", "img2", "img4"], 1: ["img1", "img3"]}
    assert sorted(by_world[1]) == sorted(by_world[2]) == [f"img{i}" for i in range(5)]
    for rid, rec in by_world[1].items():
        assert rec == by_world[2][rid], rid
