"""End-to-end restoration with the tiny model + tiny VQ: LQ -> prompt -> generate -> decode ->
colour fix, the folder runner (PNG + JSON + metrics), and the sample config."""

import json

import numpy as np
import pytest
import torch

from common.color_fix import wavelet_color_fix
from common.config import compose_config, to_dataclass
from common.data.io import write_image
from pure.evaluate import PureSampleConfig, register_configs, run_restore
from pure.jacobi import SJDConfig
from pure.processors import SamplingConfig
from pure.restore import Restorer, split_text
from pure.tokenizer import SpecialIds as S


def lq_image(seed, h=5, w=7):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("sjd", [None, SJDConfig(active_from=0, window=8)])
def test_restore_image_only_produces_image_of_model_size(tiny_model, tiny_vq, test_tokenizer, sjd):
    # resolution 8 with the ds-2 tiny VQ: 4x4 latents = grid 1x1, 21 tokens after <h><w>; the 5x7
    # LQ is fitted into the 8x8 bucket with its aspect kept (8 wide, round(5 * 8 / 7) = 6 high)
    r = Restorer(
        tiny_model, tiny_vq, test_tokenizer, SamplingConfig(), sjd, resolution=8, max_new_tokens=30, image_only=True
    )
    (res,) = r.restore([lq_image(0)], torch.Generator().manual_seed(0))
    assert res.ok and res.image.shape == (3, 6, 8) and res.lq.shape == (3, 6, 8)
    assert res.new_tokens == 20  # 4 rows of (4 codes + row end); the end token stopped it
    assert float(res.image.min()) >= 0 and float(res.image.max()) <= 1
    # the output is the wavelet fix of the decoded codes against the resized LQ
    assert torch.allclose(res.image, wavelet_color_fix(res.raw[None], res.lq[None])[0], atol=1e-6)
    rec = res.record()
    assert json.loads(json.dumps(rec))["ok"] is True


def test_restore_without_image_falls_back_to_lq(tiny_model, tiny_vq, test_tokenizer):
    r = Restorer(tiny_model, tiny_vq, test_tokenizer, SamplingConfig(cfg=1.0), resolution=8, max_new_tokens=4)
    res = r.restore([lq_image(1), lq_image(2, 8, 8)], torch.Generator().manual_seed(0))
    assert [x.ok for x in res] == [False, False]
    assert [tuple(x.image.shape) for x in res] == [(3, 6, 8), (3, 8, 8)]  # aspect kept: 5x7 and 8x8 LQs
    assert all(torch.equal(x.image, x.lq) for x in res)
    prompt = r.prepare(lq_image(1))[1]
    assert prompt[0] == S.BOS and prompt[-2:] == [S.IMG_END, S.EOT]
    # 8x8 at ds 2 -> 4x4 latents -> block of 3 + 4 * 5 + 1 tokens
    start = prompt.index(S.IMG_START)
    assert (
        prompt[start : start + 3] == [S.IMG_START, S.SIZE_BASE + 1, S.SIZE_BASE + 1] and len(prompt) - 1 - start == 24
    )


def test_split_text():
    assert split_text("Medium blur, small noise. A cat on a table.") == (
        "Medium blur, small noise.",
        "A cat on a table.",
    )
    assert split_text("garbage") == ("", "garbage")


def test_folder_run_writes_png_json_and_metrics(tmp_path, test_tokenizer_path):
    lr, hr = tmp_path / "LR", tmp_path / "HR"
    for i in range(2):
        write_image(lr / f"img{i}.png", lq_image(10 + i, 4, 4))
        write_image(hr / f"img{i}.png", lq_image(20 + i, 8, 8))
    register_configs()
    raw = compose_config(
        "pure",
        "sample",
        [
            "model=tiny",
            "ckpt_dir=null",
            "vq_ckpt=null",
            "vq_size=tiny",
            f"tokenizer={test_tokenizer_path}",
            f"lr_dir={lr}",
            f"hr_dir={hr}",
            f"out_dir={tmp_path / 'out' / 'sr'}",
            "resolution=8",
            "image_only=true",
            "max_new_tokens=30",
            "device=cpu",
            "metrics=[psnr]",
            "sjd.enabled=true",
            "sjd.active_from=0",
            "batch_size=2",
        ],
    )
    cfg = to_dataclass(PureSampleConfig, {k: v for k, v in raw.items()})
    result = run_restore(cfg)
    sr = tmp_path / "out" / "sr"
    names = sorted(p.name for p in sr.iterdir())
    assert names == ["img0.json", "img0.png", "img1.json", "img1.png", "metrics.json", "metrics.md"] + [
        "metrics_per_image.csv",
        "run_settings.json",
        "summary.json",
    ]
    rec = json.loads((sr / "img0.json").read_text())
    assert rec["ok"] and rec["new_tokens"] == 20
    assert result["summary"]["images"] == 2 and result["summary"]["failed"] == 0
    assert "psnr" in json.dumps(result) and (sr / "metrics.json").is_file()


def test_sample_config_composes_with_sweep_keys_and_training_exp():
    import importlib.util
    from pathlib import Path

    raw = compose_config(
        "pure", "sample", ["cfg=1.0", "temperature=0.7", "sjd.enabled=true", "sjd.window=8", "+exp=quick", "lr_dir=x"]
    )
    spec = importlib.util.spec_from_file_location(
        "sample_pure", Path(__file__).parents[2] / "launch" / "sample_pure.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = to_dataclass(PureSampleConfig, mod.sample_view(raw))
    assert (cfg.cfg, cfg.temperature, cfg.sjd.enabled, cfg.sjd.window) == (1.0, 0.7, True, 8)
    assert cfg.model["hidden_size"] == 64 and cfg.device == "cpu"  # from +exp=quick
    from omegaconf import OmegaConf

    with_block = OmegaConf.merge(OmegaConf.to_container(raw), {"sample": {"resolution": 128, "vq_ckpt": None}})
    cfg = to_dataclass(PureSampleConfig, mod.sample_view(with_block))
    assert cfg.resolution == 128 and cfg.vq_ckpt is None
    default = to_dataclass(PureSampleConfig, compose_config("pure", "sample", ["lr_dir=x"]))
    assert (default.cfg, default.temperature, default.top_k, default.max_new_tokens) == (0.8, 0.9, 1, 8192)
    assert list(default.metrics) == ["psnr", "ssim"] and default.sjd.window == 16 and not default.sjd.enabled


def test_load_components_from_hf_export(tmp_path, tiny_model, test_tokenizer_path):
    """ckpt_dir holding our HF export (+ tokenizer.json): config.json wins over the model group,
    weights load strictly onto a meta-built model, the tokenizer is found beside them."""
    import shutil

    from pure.evaluate import load_components
    from pure.official import save_hf_shards

    ckpt = tmp_path / "export"
    save_hf_shards(tiny_model, ckpt, max_shard_size="2MB", config=tiny_model.config, dtype=None)
    shutil.copy(test_tokenizer_path, ckpt / "tokenizer.json")
    cfg = PureSampleConfig(
        model={"size": "7b"}, ckpt_dir=str(ckpt), vq_ckpt=None, vq_size="tiny", lr_dir="x", device="cpu"
    )
    model, vq, tok = load_components(cfg, torch.device("cpu"))
    assert model.config.hidden_size == 64 and not any(p.is_meta for p in model.parameters())
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(tiny_model.state_dict().items())):
        assert torch.equal(a, b), k
    assert tok.code_map.num_codes == 16384 and vq.config.codebook_size == 64


def test_scaled_batch_with_a_rejected_image_restores_each_other_image_once():
    """A folder batch in scaled mode: the rejected image is skipped and counted, and the images
    before it in the batch are not restored a second time (each one costs a whole generation)."""
    from common.paths import ImageRejected, SkipLog
    from pure.evaluate import _restore_or_skip

    class CountingRestorer:
        scale = 4.0

        def __init__(self):
            self.calls = []

        def restore(self, lqs, generator=None):
            out = []
            for lq in lqs:  # image after image, as Restorer.restore does with `scale` set
                if lq.shape[0] < 2:
                    raise ImageRejected("too small")
                self.calls.append(int(lq[0, 0, 0]))
                out.append(f"restored {int(lq[0, 0, 0])}")
            return out

    batch = [(i, np.full((1 if i == 2 else 4, 4, 3), i, np.uint8)) for i in range(4)]
    r, skips = CountingRestorer(), SkipLog("test")
    got = _restore_or_skip(r, batch, None, skips, lambda i: f"img{i}.png")
    assert got == [(0, "restored 0"), (1, "restored 1"), (3, "restored 3")]
    assert sorted(r.calls) == [0, 1, 3] and skips.skipped == ["img2.png"]
