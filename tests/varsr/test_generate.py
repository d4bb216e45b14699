"""VARSR generation speed paths (issue 9): batching with per-image seeds, refiner noise hook,
raw-logit trace, bf16 autocast, compiled blocks vs eager.

References are independent of the path under test: single-image runs, the teacher-forced
masked forward (no KV cache), the eager loop, and torch's RNG state.
"""

import pytest
import torch

from tests.varsr.conftest import lively
from varsr.generate import generate_fhat
from varsr.model.config import model_config


@pytest.fixture(scope="module")
def tiny():
    return lively("tiny")


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_batch_equals_single_runs_with_per_image_seeds(tiny):
    model, vqvae = tiny
    torch.manual_seed(5)
    lr = torch.rand(3, 3, 96, 96) * 2 - 1
    seeds = (11, 12, 13)
    # top_k 8 / temperature 1: real draws, so a wrong generator-to-image mapping changes tokens
    kw = dict(cfg=3.0, top_k=8, return_trace=True)
    batch, tr = generate_fhat(model, vqvae, lr, generator=_gens(*seeds), **kw)
    for b, s in enumerate(seeds):
        single, ts = generate_fhat(model, vqvae, lr[b : b + 1], generator=_gens(s), **kw)
        for si in range(len(model.patch_nums)):
            assert torch.equal(tr.ids[si][b : b + 1], ts.ids[si])
        assert torch.allclose(batch[b : b + 1], single, atol=1e-5, rtol=0)
    # teeth: swapping the seeds of images 0 and 1 changes both images, leaves image 2 alone
    swapped = generate_fhat(model, vqvae, lr, generator=_gens(12, 11, 13), **kw)[0]
    assert not torch.allclose(swapped[:2], batch[:2], atol=1e-3)
    assert torch.allclose(swapped[2], batch[2], atol=1e-5, rtol=0)


def test_refiner_noise_hook_reproduces_runs(tiny):
    model, vqvae = tiny
    torch.manual_seed(6)
    B, G = 2, model.patch_nums[-1]
    lr = torch.rand(B, 3, 96, 96) * 2 - 1
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    b = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(7))
    c = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4)
    # Explicit noise: the exact tensor the seed-7 generator yields after the token draws
    # (greedy top_k 1 still draws once per scale).  Rebuild it from a twin generator.
    twin = torch.Generator().manual_seed(7)
    _, tr = generate_fhat(model, vqvae, lr, cfg=3.0, generator=twin, refine=False, return_trace=True)
    noise = model.diffloss.draw_noise(B * G * G, True, twin)  # one row per last-scale token and image
    assert noise.shape == (model.diffloss.gen_diffusion.num_timesteps + 1, B * G * G, model.cfg.cvae)
    d = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(7), refiner_noise=noise)
    assert torch.equal(a, d)
    e = generate_fhat(
        model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(7), refiner_noise=torch.randn_like(noise)
    )
    assert not torch.allclose(a, e, atol=1e-4)
    with pytest.raises(ValueError, match="refiner noise must be"):
        generate_fhat(model, vqvae, lr, cfg=3.0, refiner_noise=noise[:, :5])


def test_trace_raw_logits_match_teacher_forcing(tiny):
    model, vqvae = tiny
    torch.manual_seed(7)
    lr = torch.rand(2, 3, 96, 96) * 2 - 1
    cfg, K, B = 4.0, len(model.patch_nums), 2
    f, guided, tr = generate_fhat(
        model, vqvae, lr, cfg=cfg, generator=_gens(1, 2), return_logits=True, return_trace=True
    )
    x_in = vqvae.quantize.teacher_forcing_inputs(tr.ids)
    with torch.no_grad():
        l0, _ = model(lr, torch.zeros(B, dtype=torch.long), x_in)
        l1, _ = model(lr, torch.ones(B, dtype=torch.long), x_in)
    start = 0
    for si, pn in enumerate(model.patch_nums):
        sl = slice(start, start + pn * pn)
        raw = tr.logits[si]
        assert raw.shape == (2 * B, pn * pn, model.cfg.vocab_size)
        assert (raw[:B] - l0[:, sl]).abs().max() < 1e-5  # cond rows, before guidance
        assert (raw[B:] - l1[:, sl]).abs().max() < 1e-5  # negative-class rows
        t = cfg * si / (K - 1)
        assert tr.cfg[si] == pytest.approx(t)
        assert torch.allclose(guided[si], (1 + t) * raw[:B] - t * raw[B:], atol=1e-6)
        assert torch.equal(tr.ids[si], guided[si].argmax(-1))  # top_k 1 = greedy on the guided logits
        start += pn * pn
    off = generate_fhat(model, vqvae, lr, cfg=cfg, generator=_gens(1, 2))
    assert torch.is_tensor(off) and torch.equal(off, f)  # default: the latent only, same result


def test_lr_encoded_once_and_refiner_batched(tiny, monkeypatch):
    model, vqvae = tiny
    lr = torch.rand(3, 3, 96, 96) * 2 - 1
    rows, calls = [], []
    hook = model.con_embedding.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    real = model.diffloss.net.trunk
    monkeypatch.setattr(model.diffloss.net, "trunk", lambda x, y: calls.append(x.shape[0]) or real(x, y))
    try:
        generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    G = model.patch_nums[-1]
    assert rows == [3]  # not 6: both CFG branches share the LR tokens
    # one network call per diffusion step, over every last-scale token of all images and both branches
    assert calls == [2 * 3 * G * G] * model.diffloss.gen_diffusion.num_timesteps


def test_kv_cache_is_filled_exactly(tiny, monkeypatch):
    model, vqvae = tiny
    made = []
    real = model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    generate_fhat(model, vqvae, torch.rand(1, 3, 96, 96) * 2 - 1, cfg=2.0, generator=torch.Generator())
    (caches,) = made
    total = model.first_l + sum(p * p for p in model.patch_nums[1:])  # 37 + 90 - 1 = 126 for tiny
    assert total == 36 + 1 + (4 + 9 + 16 + 25 + 36)
    assert all(c.len == total == c.k.shape[2] and c.k.shape[0] == 2 for c in caches)


def test_bf16_autocast(tiny, monkeypatch):
    model, vqvae = tiny
    torch.manual_seed(8)
    lr = torch.rand(1, 3, 96, 96) * 2 - 1
    made = []
    real = model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    f32, t32 = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator(), return_trace=True)
    f16, t16 = generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator(), return_trace=True, dtype="bf16")
    assert made[0][0].k.dtype == torch.float32 and made[1][0].k.dtype == torch.bfloat16
    assert t16.logits[0].dtype == torch.float32  # the head stays fp32
    assert f16.dtype == torch.float32 and torch.isfinite(f16).all()
    # bf16 keeps ~3 significant digits: the first scale's logits agree to that level
    ref = t32.logits[0]
    assert (t16.logits[0] - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    """Inductor (C++ on CPU) per-scale compiled blocks + refiner: fp32 logits within 1e-5, same tokens.

    A 4-scale tiny model keeps the number of compiled graphs (one per scale shape + the refiner) small.
    """
    from torch._dynamo.utils import counters

    model, vqvae = lively(model_config("tiny", patch_nums=(1, 2, 3, 4)))
    torch.manual_seed(9)
    lr = torch.rand(2, 3, 64, 64) * 2 - 1
    kw = dict(cfg=3.0, return_trace=True)
    eager, te = generate_fhat(model, vqvae, lr, generator=_gens(1, 2), **kw)
    torch._dynamo.reset()
    counters.clear()
    comp, tc = generate_fhat(model, vqvae, lr, generator=_gens(1, 2), compile=True, **kw)
    # really compiled: one graph per scale shape shared by both blocks (not one per block), + the refiner
    assert counters["stats"]["unique_graphs"] == len(model.patch_nums) + 1
    for le, lc in zip(te.logits, tc.logits, strict=True):
        assert (le - lc).abs().max() < 1e-5
    for ie, ic in zip(te.ids, tc.ids, strict=True):
        assert torch.equal(ie, ic)
    assert torch.allclose(eager, comp, atol=1e-5, rtol=0)
    graphs = counters["stats"]["unique_graphs"]
    again = generate_fhat(model, vqvae, lr, generator=_gens(1, 2), compile=True, **kw)[0]
    assert counters["stats"]["unique_graphs"] == graphs  # static shapes: a second call reuses the graphs
    assert torch.equal(again, comp)
