"""The VARSR training batch walk: sampler order/resume, class folders, device-side batch making."""

import numpy as np
import pytest
import torch
from PIL import Image

from varsr.config import DataConfig, SourceConfig, tiny_train_config
from varsr.data import (
    BatchMaker,
    ResumableBatchSampler,
    bicubic_lq,
    build_train_dataset,
    build_train_loader,
    class_sources,
    step_generator,
)


def _global_batches(n, b, world, count, start=0):
    """Concatenate the ranks' micro-batches into global batches."""
    iters = [iter(ResumableBatchSampler(n, b, world, r, seed=3, start_micro_batch=start)) for r in range(world)]
    return [[i for it in iters for _, i in next(it)] for _ in range(count)]


def test_sampler_global_order_independent_of_world_size():
    one = _global_batches(10, 4, 1, 7)
    two = _global_batches(10, 2, 2, 7)
    assert one == two  # same global batches whether 1 rank x 4 or 2 ranks x 2


def test_sampler_epochs_are_permutations_padded_by_wrapping():
    s = ResumableBatchSampler(10, 4, 1, 0, seed=3)
    assert s.batches_per_epoch == 3
    order = s.epoch_order(0)
    assert sorted(order[:10]) == list(range(10)) and list(order[10:]) == list(order[:2])
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))  # reshuffled per epoch
    it = iter(s)
    keys = [next(it) for _ in range(4)]
    assert [k[0][0] for k in keys] == [0, 0, 0, 1]  # epoch travels with the indices


def test_sampler_resume_skips_consumed_batches():
    full = _global_batches(10, 2, 2, 8)
    resumed = _global_batches(10, 2, 2, 3, start=5)
    assert resumed == full[5:8]


def test_class_sources_label_by_sorted_folder(tmp_path):
    for cls in ("zebra", "apple"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / cls / "a.png")
    srcs = class_sources(tmp_path)
    assert [(s.label, s.name) for s in srcs] == [(0, "class:apple"), (1, "class:zebra")]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        class_sources(tmp_path / "missing")


def test_loader_batches_are_deterministic_and_labelled(tmp_path):
    cfg = tiny_train_config(str(tmp_path))
    cfg.data = DataConfig(
        sources=[
            SourceConfig(kind="bundled", label=0, resize_shorter_to=120),
            SourceConfig(kind="bundled", label=1, ratio=0.5, resize_shorter_to=96),
        ],
        crop_size=96,
        resize_shorter_to=120,
        batch_size=3,
        num_workers=0,
        lq_mode="degrade",
    )
    ds = build_train_dataset(cfg, cache_dir=tmp_path)
    assert len(ds) == 6 + 3
    loader, _ = build_train_loader(ds, cfg, world_size=1, rank=0)
    b1 = next(iter(loader))
    b2 = next(iter(build_train_loader(ds, cfg, world_size=1, rank=0)[0]))
    assert torch.equal(b1["hr"], b2["hr"]) and torch.equal(b1["label"], b2["label"])
    assert b1["hr"].shape == (3, 3, 96, 96) and set(b1["label"].tolist()) <= {0, 1}
    assert "kernels" in b1  # sampled in the worker for the on-device degradation

    maker = BatchMaker(cfg, torch.device("cpu"))
    hr, lr, label = maker(b1, step_generator(torch.device("cpu"), 0, 0, 0, 0))
    hr2, lr2, _ = maker(b1, step_generator(torch.device("cpu"), 0, 0, 0, 0))
    assert hr.shape == lr.shape == (3, 3, 96, 96)  # LR resized back to the HR size
    assert hr.min() >= -1 and hr.max() <= 1 and lr.min() >= -1 and lr.max() <= 1
    assert torch.equal(lr, lr2)  # same (seed, rank, step, micro) -> same degradation
    _, lr3, _ = maker(b1, step_generator(torch.device("cpu"), 0, 0, 1, 0))
    assert not torch.equal(lr, lr3)
    assert torch.equal(label, b1["label"])
    # the degraded LR is blurrier than the HR: less high-frequency energy
    hf = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert hf(lr) < hf(hr)


def test_bicubic_lq_is_quantised_and_close():
    hr = torch.rand(1, 3, 32, 32)
    lq = bicubic_lq(hr, 4)
    assert lq.shape == hr.shape
    assert torch.allclose(lq * 255, (lq * 255).round(), atol=1e-4)
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert (bicubic_lq(smooth, 4) - smooth)[..., 4:-4].abs().max() < 0.02  # smooth ramps survive
