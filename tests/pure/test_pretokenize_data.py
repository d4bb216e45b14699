"""Dataset over shards and the official length-grouped sampler semantics."""

import numpy as np
import pytest

from pure.data import LengthGroupedSampler, TokenShardDataset, merge_indices, padding_waste, write_shard


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(48):
        n = int(rng.integers(10, 200))
        tok = rng.integers(4, 8000, n).tolist()
        recs.append({"token": tok, "label": [-100] * 5 + tok[5:], "id": f"r{i}"})
    write_shard(tmp_path / "s0", recs[:30])
    write_shard(tmp_path / "s1", recs[30:])
    (tmp_path / "meta.yaml").write_text("META:\n  - path: record.json\n    type: sr\n")
    merge_indices(tmp_path)
    return TokenShardDataset(tmp_path / "meta.yaml", max_seq_len=190), recs


def test_dataset_roundtrip_and_length_filter(dataset):
    ds, recs = dataset
    kept = [r for r in recs if len(r["token"]) <= 190]
    assert len(ds) == len(kept) and ds.dropped == len(recs) - len(kept)
    for i in (0, len(ds) - 1):
        rid = ds.records[i]["id"]
        r = next(r for r in recs if r["id"] == rid)
        assert ds[i] == (r["token"], r["label"])


def test_write_shard_rejects_foreign_labels(tmp_path):
    with pytest.raises(ValueError, match="labels must be -100 or equal"):
        write_shard(tmp_path / "bad", [{"token": [1, 2, 3], "label": [-100, 5, 3], "id": "x"}])


def test_sampler_covers_epoch_once_and_groups_lengths(dataset):
    ds, _ = dataset
    world, mb = 2, 2
    samplers = [LengthGroupedSampler(ds, mb, world, r, window_mult=1, seed=1) for r in range(world)]
    spe = samplers[0].steps_per_epoch()
    assert spe == len(ds) // (mb * world)
    seen, waste_sorted = [], []
    its = [iter(s) for s in samplers]
    for _ in range(spe):
        gb = [i for it in its for i in next(it)]
        seen += gb
        waste_sorted.append(padding_waste([int(ds.lengths[i]) for i in gb]))
    assert len(set(seen)) == len(seen) == spe * mb * world  # no record twice per epoch
    # windows of one global batch after sorting by length: batches are length-homogeneous,
    # so padding waste is far below random batching
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(ds))[: spe * 4].reshape(spe, 4)
    waste_random = [padding_waste([int(ds.lengths[i]) for i in b]) for b in perm]
    assert np.mean(waste_sorted) < 0.5 * np.mean(waste_random)


def test_sampler_resume_position(dataset):
    ds, _ = dataset
    full = LengthGroupedSampler(ds, 2, 1, 0, window_mult=2, seed=4)
    it = iter(full)
    spe = full.steps_per_epoch()
    order = [next(it) for _ in range(spe + 3)]  # runs into the second epoch
    resumed = LengthGroupedSampler(ds, 2, 1, 0, window_mult=2, seed=4)
    resumed.epoch, resumed.consumed = divmod(spe - 2, spe)
    it2 = iter(resumed)
    assert [next(it2) for _ in range(5)] == order[spe - 2 :]
    assert order[:spe] != order[spe : 2 * spe] or spe < 2  # a new shuffle each epoch
