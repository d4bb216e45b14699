"""Chameleon decoder: official key layout, closed-form sizes, and forward-path equivalences
(SDPA vs eager softmax, KV-cached vs full forward, padding masks, HF's implementation)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from pure.model import ChameleonForCausalLM, KVCache, chameleon_config, config_from_dict

REF = Path(__file__).resolve().parents[1] / "reference"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _ref(name):
    path = REF / name
    return json.loads(path.read_text())


def test_7b_on_meta_matches_official_keys_and_count():
    ref = _ref("pure_chameleon_7b.json")
    cfg = chameleon_config("7b")
    with torch.device("meta"):
        model = ChameleonForCausalLM(cfg)
    sd = model.state_dict()
    assert list(sd) == list(ref["params"])  # same keys, same order, no buffers
    assert {k: list(v.shape) for k, v in sd.items()} == ref["params"]
    assert all(p.is_meta for p in model.parameters())
    assert model.num_params() == ref["num_params"] == 7_080_267_776 == cfg.num_params()


def test_tiny_matches_tiny_reference(tiny_model):
    ref = _ref("pure_chameleon_7b_tiny.json")
    sd = tiny_model.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == ref["params"]
    assert tiny_model.num_params() == ref["num_params"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert getattr(tiny_model.config, key) == ref["config"][key]


def test_yaml_configs_match_registry():
    for size in ("tiny", "7b"):
        values = yaml.safe_load((REPO / "configs/pure/model" / f"{size}.yaml").read_text())
        assert config_from_dict(values) == chameleon_config(size)


def test_init_values(tiny_model):
    attn = tiny_model.model.layers[0].self_attn
    assert torch.equal(attn.q_norm.weight, torch.ones(1, 16)) and torch.equal(attn.k_norm.bias, torch.zeros(1, 16))
    std = tiny_model.lm_head.weight.std().item()
    assert abs(std - 0.02) < 1e-3


def test_cross_entropy_at_init_is_log_vocab(tiny_model):
    torch.manual_seed(1)
    ids = torch.randint(0, 73728, (2, 32))
    labels = ids.clone()
    labels[:, :8] = -100  # masked prompt
    logits = tiny_model(ids)
    assert logits.dtype == torch.float32 and logits.shape == (2, 32, 73728)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert abs(loss.item() - math.log(73728)) < 0.1


def test_eager_matches_sdpa(tiny_model):
    ids = torch.randint(0, 73728, (2, 20))
    sdpa = tiny_model(ids)
    tiny_model.set_attention_impl("eager")
    assert (tiny_model(ids) - sdpa).abs().max() < 1e-5


def test_kv_cache_token_by_token_and_windows(tiny_model):
    torch.manual_seed(2)
    ids = torch.randint(0, 73728, (2, 16))
    full = tiny_model(ids)
    cache = tiny_model.new_cache(2)  # growable, lazily allocated
    steps = torch.cat([tiny_model(ids[:, i : i + 1], cache=cache) for i in range(16)], 1)
    assert cache.length == 16 and (steps - full).abs().max() < 1e-5

    # SJD-style: prefill, a 5-token window, roll back 3 (drafts rejected), redo with a 6-token window
    cache = KVCache.for_model(tiny_model, 2, capacity=8, growable=True)
    pre = tiny_model(ids[:, :6], cache=cache, logits_slice=slice(-1, None))
    assert pre.shape == (2, 1, 73728) and (pre[:, 0] - full[:, 5]).abs().max() < 1e-5
    win = tiny_model(ids[:, 6:11], cache=cache)
    assert (win - full[:, 6:11]).abs().max() < 1e-5
    cache.truncate(8)
    redo = tiny_model(ids[:, 8:14], cache=cache)
    assert cache.length == 14 and cache.capacity >= 14
    assert (redo - full[:, 8:14]).abs().max() < 1e-5
    # the rolled-back cache equals a fresh one built over the same tokens
    fresh = tiny_model.new_cache(2)
    tiny_model(ids[:, :14], cache=fresh)
    for a, b in zip(cache.keys + cache.values, fresh.keys + fresh.values):
        assert (a[:, :, :14] - b[:, :, :14]).abs().max() < 1e-5


def test_fixed_capacity_cache_refuses_to_grow(tiny_model):
    cache = KVCache.for_model(tiny_model, 1, capacity=4, growable=False)
    tiny_model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(RuntimeError, match="full"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError):
        cache.truncate(5)


def test_left_padding_with_remembered_key_mask(tiny_model):
    torch.manual_seed(3)
    a, b = torch.randint(0, 73728, (1, 9)), torch.randint(0, 73728, (1, 5))
    pad = 4
    ids = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :pad] = False
    pos = torch.stack([torch.arange(9), (torch.arange(9) - pad).clamp(min=0)])
    cache = tiny_model.new_cache(2)
    out = tiny_model(ids, position_ids=pos, cache=cache, attention_mask=mask, logits_slice=slice(-1, None))
    nxt = torch.tensor([[7], [11]])
    step = tiny_model(nxt, position_ids=pos[:, -1:] + 1, cache=cache)  # mask is remembered by the cache
    ref_a = tiny_model(torch.cat([a, nxt[:1]], 1))
    ref_b = tiny_model(torch.cat([b, nxt[1:]], 1))
    assert (out[0, 0] - ref_a[0, -2]).abs().max() < 1e-5 and (out[1, 0] - ref_b[0, -2]).abs().max() < 1e-5
    assert (step[0, 0] - ref_a[0, -1]).abs().max() < 1e-5 and (step[1, 0] - ref_b[0, -1]).abs().max() < 1e-5
    assert torch.isfinite(out).all()


def test_4d_mask_and_cache_select(tiny_model):
    ids = torch.randint(0, 73728, (3, 8))
    full = tiny_model(ids)
    allow = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    assert (tiny_model(ids, attention_mask=allow) - full).abs().max() < 1e-5  # ANDed with causal
    cache = tiny_model.new_cache(3)
    tiny_model(ids[:, :6], cache=cache)
    cache.select([2, 0])
    out = tiny_model(ids[[2, 0], 6:], cache=cache)
    assert (out - full[[2, 0], 6:]).abs().max() < 1e-5
    clone = cache.clone().truncate(6)
    assert cache.length == 8 and clone.length == 6


def test_meta_build_then_materialise(tiny_config):
    with torch.device("meta"):
        model = ChameleonForCausalLM(tiny_config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.equal(model.model.layers[1].self_attn.k_norm.weight, torch.ones(1, 16))
    assert abs(model.model.embed_tokens.weight.std().item() - 0.02) < 1e-3
    assert torch.isfinite(model(torch.zeros(1, 3, dtype=torch.long))).all()


def test_dropout_only_in_train_mode(tiny_config):
    tiny_config.dropout = 0.5
    model = ChameleonForCausalLM(tiny_config)
    ids = torch.randint(0, 73728, (1, 6))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


def test_matches_transformers_chameleon(tiny_model):
    """Independent oracle: HF's Chameleon (its q/k-norm is per head, so the shared γ/β is expanded)."""
    import transformers as tf  # dev extra (>= 4.44 has Chameleon)

    vocab_map = {f"IMGIMG{i}Z": i + 4 for i in range(16)}
    vocab_map["<image>"] = 8711
    hc = tf.ChameleonConfig(
        vocab_size=73728,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocabulary_map=vocab_map,
        vq_config=dict(
            embed_dim=8,
            num_embeddings=16,
            latent_channels=32,
            resolution=32,
            base_channels=32,
            channel_multiplier=[1],
            num_res_blocks=1,
            attn_resolutions=[],
        ),
        attn_implementation="eager",
    )
    hf = tf.ChameleonForConditionalGeneration(hc).eval()
    with torch.no_grad():  # non-trivial norms so the γ/β layout matters
        for name, p in tiny_model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    sd = {k: (v.expand(4, -1) if "self_attn" in k and "_norm." in k else v) for k, v in tiny_model.state_dict().items()}
    result = hf.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and all("vqmodel" in k for k in result.missing_keys)
    ids = torch.randint(9000, 65536, (2, 12))
    with torch.no_grad():
        ref = hf.model(input_ids=ids).last_hidden_state
    assert (tiny_model.forward_hidden(ids) - ref).abs().max() < 1e-4
