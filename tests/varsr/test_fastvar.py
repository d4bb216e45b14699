"""FastVAR pruning: keep counts, ratio 0 bit-exact, per-sample pivotal selection and restore."""

import pytest
import torch

from tests.varsr.conftest import lively
from varsr.fastvar import FastVARConfig, FastVARState, keep_count
from varsr.sample import generate_fhat


@pytest.fixture(scope="module")
def tiny_lively():
    return lively("tiny")


def test_keep_counts():
    assert keep_count(576, 0.4, 64) == 346
    assert keep_count(1024, 0.3, 64) == 717
    assert keep_count(100, 0.9, 64) == 64
    assert keep_count(1024, 0.0, 64) == 1024
    st = FastVARState(FastVARConfig(enabled=True), (1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    assert (st.keep_at(8), st.keep_at(9), st.cache_si) == (346, 717, 7)
    assert st.keep_at(0) is None and st.keep_at(7) is None


def _run(model, vqvae, lr, fv):
    return generate_fhat(model, vqvae, lr, cfg=3.0, generator=torch.Generator().manual_seed(0), fastvar=fv)


def test_ratio_zero_bit_exact(tiny_lively):
    model, vqvae = tiny_lively
    lr = torch.rand(2, 3, 96, 96) * 2 - 1
    base = _run(model, vqvae, lr, None)
    off = FastVARConfig(enabled=True, second_last_ratio=0.0, last_ratio=0.0, later_layer_start=0)
    assert torch.equal(base, _run(model, vqvae, lr, off))
    on = FastVARConfig(enabled=True, second_last_ratio=0.4, last_ratio=0.3, later_layer_start=0, min_keep=4)
    pruned = _run(model, vqvae, lr, on)
    assert pruned.shape == base.shape and not torch.equal(base, pruned)


def test_select_and_restore():
    st = FastVARState(FastVARConfig(enabled=True, later_layer_start=0, min_keep=1, second_last_ratio=0.5), (1, 2, 3, 4))
    st.set_step(1)  # cache scale (side 2)
    p = st(0)
    cached = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    p.remember("attn", cached)
    st.set_step(2)  # side 3, keep 9 - 4 = 5
    p = st(0)
    assert p.active and p.keep == 5
    x = torch.zeros(2, 9, 3)
    x[0, [1, 4, 5, 7, 8], 0] = torch.tensor([5.0, -5, 4, -4, 3])  # sample 0: far from the mean
    x[1, [0, 2, 3, 6, 8], 1] = torch.tensor([5.0, -5, 4, -4, 3])  # sample 1: different positions
    idx = p.select(x)
    assert idx.tolist() == [[1, 4, 5, 7, 8], [0, 2, 3, 6, 8]]
    out = torch.full((2, 5, 3), -1.0)
    full = p.restore("attn", idx, out)
    up = torch.nn.functional.interpolate(cached.transpose(1, 2).reshape(2, 3, 2, 2), size=(3, 3), mode="area")
    up = up.flatten(2).transpose(1, 2)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    assert torch.equal(full[mask], torch.full((10, 3), -1.0).view(-1, 3))
    assert torch.equal(full[~mask], up[~mask])
