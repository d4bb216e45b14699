"""Decoding attends in the KV cache's dtype and never converts the cache (issue 18 row 11).

CUDA autocast runs layer norms in fp32, so under it a bf16 model's QK-norm hands fp32 q/k to
attention. Up-casting the cache to meet them copied each layer's whole K/V buffer to fp32 on
every token. CPU autocast keeps layer norms in bf16, so the CUDA rule is reproduced here with a
forward hook that returns the norm's output in fp32; a spy on SDPA then shows which tensors
attention received: the cache's own storage, in bf16, and a bf16 query.
"""

import pytest
import torch
import torch.nn.functional as F

from pure.model import ChameleonForCausalLM, chameleon_config
from pure.model.kv_cache import StaticKVCache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bf16_model_with_fp32_qk_norm():
    torch.manual_seed(0)
    model = ChameleonForCausalLM(chameleon_config("tiny")).eval().to(torch.bfloat16)
    for layer in model.model.layers:  # CUDA autocast's rule: layer_norm output in fp32
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
            norm.register_forward_hook(lambda m, args, out: out.float())
    return model


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.dtype, k.dtype, v.dtype, k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def _storages(buffers):
    return {t.untyped_storage().data_ptr() for t in buffers}


def test_static_cache_decode_attends_its_buffers_in_bf16(bf16_model_with_fp32_qk_norm, sdpa_calls):
    model = bf16_model_with_fp32_qk_norm
    q = model.model.layers[0].self_attn.q_norm(torch.randn(1, 3, 4, 16, dtype=torch.bfloat16))
    assert q.dtype == torch.float32  # the hook really reproduces the fp32 norm output
    cache = StaticKVCache.for_model(model, [(1, 32)])
    assert cache.dtype == torch.bfloat16
    ids = torch.randint(4, 8000, (1, 6))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.forward_static(ids, torch.arange(6)[None], cache, prefill_group=0)
        sdpa_calls.clear()
        for t in range(6, 9):  # decode steps over the whole buffer
            logits = model.forward_static(torch.randint(4, 8000, (1, 1)), torch.tensor([[t]]), cache)
    assert torch.isfinite(logits).all()
    buffers = _storages(cache.buffers())
    assert len(sdpa_calls) == 3 * len(model.model.layers)
    for qd, kd, vd, kp, vp in sdpa_calls:
        assert (qd, kd, vd) == (torch.bfloat16,) * 3
        assert kp in buffers and vp in buffers  # the buffers themselves: no per-step converted copy


def test_growing_cache_decode_attends_in_the_cache_dtype(bf16_model_with_fp32_qk_norm, sdpa_calls):
    model = bf16_model_with_fp32_qk_norm
    cache = model.new_cache(1, capacity=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(4, 8000, (1, 5)), cache=cache)
        model(torch.randint(4, 8000, (1, 1)), cache=cache)
    held = _storages(cache.keys + cache.values)
    assert len(sdpa_calls) == 2 * len(model.model.layers)
    for qd, kd, vd, kp, vp in sdpa_calls:
        assert (qd, kd, vd) == (torch.bfloat16,) * 3 and kp in held and vp in held
