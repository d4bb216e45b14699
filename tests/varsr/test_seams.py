"""Seams of the VARSR pipeline: which image's LR conditions which row, which input lands in which file.

Inputs are made distinguishable (flat images of different brightness, per-row perturbations) so the
expected value comes from the input itself, never from the configuration under test. Bug each test
catches (each planted by hand once; the test failed):

- test_batch_maker_pairs_each_hr_with_its_own_lr: the LR of image j paired with the HR target of image
  i (e.g. the degraded batch returned in another order than the HR batch).
- test_each_row_is_conditioned_by_its_own_lr: the LR prefix tokens of one image broadcast to, or mixed
  into, another row of the batch (a wrong reshape/expand of the prefix in the teacher-forced forward).
- test_folder_run_writes_each_input_to_its_own_name_and_rank: output i written under input j's name,
  the per-image seed not being seed + index, or a rank processing another rank's share.
- Tiles: tests/varsr/test_tiling.py pins which latent tile lands where (a stub whose output encodes
  the tile position).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from common.data.io import read_image, write_image


def _flat_batch(levels, size=32):
    return torch.tensor(levels).view(-1, 1, 1, 1).expand(len(levels), 3, size, size).contiguous()


def test_batch_maker_pairs_each_hr_with_its_own_lr():
    from common.degradation.kernels import sample_kernels
    from common.degradation.presets import get_preset
    from varsr.data import BatchMaker

    levels = [0.15, 0.85, 0.5]
    hr = _flat_batch(levels, 64)
    deg = get_preset("varsr_mild")
    kernels = sample_kernels(deg, len(levels), np.random.default_rng(0))
    for lq_mode in ("bicubic", "degrade"):
        cfg = SimpleNamespace(mode="sr", data=SimpleNamespace(lq_mode=lq_mode), degradation=deg)
        maker = BatchMaker(cfg, torch.device("cpu"))
        batch = {"hr": hr, "label": torch.zeros(3, dtype=torch.long), "kernels": kernels}
        hr_out, lr_out, _ = maker(batch, torch.Generator().manual_seed(0))
        hr_means = ((hr_out + 1) / 2).mean(dim=(1, 2, 3))
        lr_means = ((lr_out + 1) / 2).mean(dim=(1, 2, 3))
        assert torch.allclose(hr_means, torch.tensor(levels), atol=0.02), (lq_mode, hr_means)
        # Blur/noise/JPEG keep a flat image's brightness close: row i's LR is nearest to level i.
        nearest = (lr_means[:, None] - torch.tensor(levels)[None]).abs().argmin(dim=1)
        assert nearest.tolist() == [0, 1, 2], (lq_mode, lr_means)


def test_each_row_is_conditioned_by_its_own_lr():
    from tests.varsr.conftest import lively

    model, vqvae = lively("tiny")
    S = model.cfg.image_size
    torch.manual_seed(0)
    lr = torch.rand(2, 3, S, S) * 2 - 1
    hr = torch.rand(2, 3, S, S) * 2 - 1
    with torch.no_grad():
        targets = vqvae.encode_for_training(hr)
    label = torch.zeros(2, dtype=torch.long)

    def logits(lr_in):
        with torch.no_grad():
            return model(lr_in, label, targets.x_inputs)[0]

    base = logits(lr)
    bumped = lr.clone()
    bumped[1] = torch.rand(3, S, S) * 2 - 1  # change only image 1's LR
    moved = logits(bumped)
    assert torch.equal(moved[0], base[0]), "row 0 must not see image 1's LR"
    assert not torch.allclose(moved[1], base[1]), "row 1 must be conditioned by its own LR"


def test_folder_run_writes_each_input_to_its_own_name_and_rank(tmp_path, monkeypatch):
    import common.dist as cdist
    import varsr.evaluate as ev
    from common.config import compose_config, to_dataclass

    lr_dir = tmp_path / "LR"
    levels = {"a": 20, "b": 120, "c": 220, "d": 70}
    for name, v in levels.items():
        write_image(lr_dir / f"{name}.png", np.full((6, 5, 3), v, np.uint8))
    seeds = []

    def stub_sr_one(model, vqvae, img, cfg, device, generator, on_scale=None):
        seeds.append(generator.initial_seed())
        h, w = img.shape[:2]
        return torch.full((1, 3, 4 * h, 4 * w), float(img.mean()) / 255)

    monkeypatch.setattr(ev, "load_models", lambda cfg, device: (None, None))
    monkeypatch.setattr(ev, "sr_one", stub_sr_one)
    ev.register_configs()
    for rank in (1, 0):  # two ranks of a world of 2, one after the other
        monkeypatch.setattr(cdist, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(cdist, "get_world_size", lambda: 2)
        monkeypatch.setattr(cdist, "barrier", lambda: None)
        monkeypatch.setattr(cdist, "all_gather_object", lambda obj: [obj])
        out = tmp_path / f"out{rank}"
        raw = compose_config(
            "varsr",
            "sample",
            [
                "model=tiny",
                "ckpt=null",
                "vae_ckpt=null",
                f"lr_dir={lr_dir}",
                f"out_dir={out}",
                "metrics=[]",
                "device=cpu",
                "seed=100",
            ],
        )
        seeds.clear()
        ev.run_sampling(to_dataclass(ev.SampleRunConfig, raw))
        # Sorted names a, b, c, d -> indices 0..3; rank r takes indices r, r + 2 with seed 100 + index.
        mine = ["a", "c"] if rank == 0 else ["b", "d"]
        assert sorted(p.stem for p in out.glob("*.png")) == mine
        assert seeds == [100 + "abcd".index(n) for n in mine]
        for name in mine:
            img = read_image(out / f"{name}.png")
            assert img.shape == (24, 20, 3) and abs(int(img.mean()) - levels[name]) <= 1, name
