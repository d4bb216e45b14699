"""PURE training -> HF export: config.json keeps every field of the starting checkpoint's config.json
(vocabulary_map included, which the official `from_pretrained` needs), the dtype switch, and EMA
weights (when enabled) as what gets exported. Tiny model, a few CPU steps each."""

import json

import pytest
import torch

from pure.model import ChameleonForCausalLM, chameleon_config
from pure.official import load_hf_shards, save_hf_shards
from pure.train import Trainer
from tests.pure.test_train import VOCAB, make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _initial_hf_dir(tmp_path, vocab):
    """A starting checkpoint in HF layout whose config.json has fields our size registry knows nothing of."""
    torch.manual_seed(3)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=vocab))
    d = tmp_path / "init_hf"
    save_hf_shards(lm, d, config=lm.config, dtype=torch.float32)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        vocabulary_map={"<image>": 8711, "IMGIMGBAZ": 4, "IMGIMGBBZ": 5, "<racm3:break>": 8710},
        some_future_field={"kept": [1, 2, 3]},
        transformers_version="4.44.0",
        vq_config={"embed_dim": 8, "num_embeddings": 16, "resolution": 32},
    )
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg, lm


def _snapshots(trainer):
    snaps = []
    return snaps, lambda step, loss: snaps.append({k: v.detach().clone() for k, v in trainer.lm.state_dict().items()})


def test_export_keeps_initial_config_json_after_vocab_extension(tmp_path):
    small = VOCAB - 512
    init_dir, init_cfg, init_lm = _initial_hf_dir(tmp_path, small)
    cfg = make_cfg(
        tmp_path,
        n_records=2,
        **{
            "schedule.epochs": 2,
            "init.from_hf": str(init_dir),
            "init.extend_vocab_from": small,
            "export.hf_dir": str(tmp_path / "hf"),
            "export.dtype": "fp32",
        },
    )
    trainer = Trainer(cfg)
    # the starting weights really came from the HF dir (old rows), new rows were added
    assert torch.equal(trainer.lm.lm_head.weight[:small], init_lm.lm_head.weight)
    trainer.fit()
    out = json.loads((tmp_path / "hf/config.json").read_text())
    for key, value in init_cfg.items():
        if key in ("vocab_size", "torch_dtype"):
            continue
        assert key in out and out[key] == value, key
    assert out["vocab_size"] == VOCAB and out["torch_dtype"] == "float32"
    fresh = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=out["vocab_size"]))
    load_hf_shards(fresh, tmp_path / "hf")
    for k, v in trainer.lm.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k  # fp32 export: bit-exact


def test_export_without_initial_checkpoint_and_bf16_default(tmp_path):
    cfg = make_cfg(tmp_path, n_records=2, **{"schedule.epochs": 1, "export.hf_dir": str(tmp_path / "hf")})
    trainer = Trainer(cfg)
    trainer.fit()
    out = json.loads((tmp_path / "hf/config.json").read_text())
    assert out["torch_dtype"] == "bfloat16" and out["vocab_size"] == VOCAB and "vocabulary_map" not in out
    from safetensors import safe_open

    shard = next((tmp_path / "hf").glob("model-*.safetensors"))
    with safe_open(str(shard), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())


@pytest.mark.parametrize("use_for_eval", [True, False])
def test_export_uses_ema_weights_when_enabled(tmp_path, use_for_eval):
    """decay 0.5, start_step 1: after step 1 the average equals the weights, then e <- (e + w) / 2.
    Expected values come from snapshots of the raw weights after every step, not from the EMA class."""
    cfg = make_cfg(
        tmp_path,
        n_records=2,
        **{
            "schedule.epochs": 3,
            "export.hf_dir": str(tmp_path / "hf"),
            "export.dtype": "fp32",
            "ema.enabled": True,
            "ema.decay": 0.5,
            "ema.start_step": 1,
            "ema.use_for_eval": use_for_eval,
        },
    )
    trainer = Trainer(cfg)
    snaps, on_step = _snapshots(trainer)
    trainer.fit(on_step)
    assert len(snaps) == 3
    exported = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    load_hf_shards(exported, tmp_path / "hf")
    raw = snaps[-1]
    for k, v in exported.state_dict().items():
        expected = (snaps[0][k] * 0.5 + snaps[1][k] * 0.5) * 0.5 + snaps[2][k] * 0.5 if use_for_eval else raw[k]
        torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-7)
    moved = [k for k in raw if not torch.allclose(snaps[2][k], snaps[1][k])]
    assert moved  # training changed weights, so EMA != raw is a real distinction
    if use_for_eval:
        assert not torch.allclose(exported.state_dict()[moved[0]], raw[moved[0]])
    # the raw weights keep training: the export left them as they were
    for k, v in trainer.lm.state_dict().items():
        assert torch.equal(v, raw[k]), k


def test_ema_survives_preemption_and_resume(tmp_path):
    """SIGTERM at step 2 of 4, resume: the exported EMA equals the uninterrupted run's (the average
    is part of the training state)."""
    import os
    import signal

    over = {"schedule.epochs": 4, "export.dtype": "fp32", "ema.enabled": True, "ema.decay": 0.5}
    ref_cfg = make_cfg(tmp_path / "a", n_records=2, **over, **{"export.hf_dir": str(tmp_path / "hf_a")})
    Trainer(ref_cfg).fit()

    def kill_at_2(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = make_cfg(tmp_path / "b", n_records=2, **over, **{"export.hf_dir": str(tmp_path / "hf_b")})
    assert Trainer(cfg).fit(kill_at_2)["step"] == 2
    assert Trainer(cfg).fit()["step"] == 4
    a, b = (ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB)) for _ in range(2))
    load_hf_shards(a, tmp_path / "hf_a")
    load_hf_shards(b, tmp_path / "hf_b")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-5, atol=1e-6)
