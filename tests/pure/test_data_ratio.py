"""PURE data mixing (issue 18 row 16): each META entry of the data config is subsampled by its OWN
`ratio` every epoch, as the official sampler does per data-config entry, even when several
entries share one `type` group (LSDIR and FFHQ are both `sr`). Expected counts are literals."""

import pytest
import yaml

from pure.data import LengthGroupedSampler, TokenShardDataset, merge_indices, write_shard
from tests.pure.test_train import make_records


def _source(root, name, n, seed):
    recs = [dict(r, id=f"{name}{i}") for i, r in enumerate(make_records(n, seed=seed))]
    write_shard(root / name / "shard_0", recs)
    return merge_indices(root / name)


def _meta(tmp_path, entries):
    f = tmp_path / "data.yaml"
    f.write_text(yaml.safe_dump({"META": [dict(e, type="sr") for e in entries]}))
    return f


def _epoch_ids(ds, epoch):
    sampler = LengthGroupedSampler(ds, micro_batch=1, world_size=1, rank=0, grad_accum=1, window_mult=4, seed=0)
    return [ds.records[i]["id"] for gb in sampler.global_batches(epoch) for i in gb], sampler.steps_per_epoch()


@pytest.mark.parametrize("lsdir_first", [True, False])
def test_ratio_applies_per_entry_within_one_type(tmp_path, lsdir_first):
    lsdir = {"path": str(_source(tmp_path, "lsdir", 10, 0)), "ratio": 0.5}
    ffhq = {"path": str(_source(tmp_path, "ffhq", 10, 1)), "ratio": 1.0}
    ds = TokenShardDataset(_meta(tmp_path, [lsdir, ffhq] if lsdir_first else [ffhq, lsdir]))
    seen = []
    for epoch in range(3):
        ids, steps = _epoch_ids(ds, epoch)
        assert steps == 15 and len(ids) == 15 == len(set(ids))  # 10 x 0.5 + 10 x 1.0, one type group
        assert sorted(i for i in ids if i.startswith("ffhq")) == sorted(f"ffhq{k}" for k in range(10))
        assert sum(i.startswith("lsdir") for i in ids) == 5
        seen.append(frozenset(i for i in ids if i.startswith("lsdir")))
    assert len(set(seen)) > 1  # the half of LSDIR is drawn again every epoch


def test_ratio_zero_drops_the_entry_and_missing_ratio_keeps_all(tmp_path):
    a = {"path": str(_source(tmp_path, "a", 6, 0)), "ratio": 0.0}
    b = {"path": str(_source(tmp_path, "b", 7, 1))}  # no ratio: every record
    c = {"path": str(_source(tmp_path, "c", 8, 2)), "ratio": 0.25}
    ids, steps = _epoch_ids(TokenShardDataset(_meta(tmp_path, [a, b, c])), 0)
    assert steps == 9 and not any(i.startswith("a") for i in ids)  # 0 + 7 + 2
    assert sum(i.startswith("b") for i in ids) == 7 and sum(i.startswith("c") for i in ids) == 2
