"""Processor chain (spec §7.2 / §12.5): CFG combine, structure mask, entropy top-k, order."""

import math

import pytest
import torch

from pure import processors as P
from pure.tokenizer import ImageCodeMap
from pure.tokenizer import SpecialIds as S

V = 73728


@pytest.fixture(scope="module")
def image_mask():
    mask = ImageCodeMap.synthetic(shuffle=True).image_mask()
    # both id ranges, independent of the code map's order (spec §8.3 bug 1)
    assert mask.sum() == 16384 and mask[4:8196].all() and mask[65536:].all() and not mask[8196:65536].any()
    return mask


def grid_state(h=1, w=1, count=0):
    st = P.state_from_prompt([0, 5, 6, int(S.IMG_START), int(S.SIZE_BASE) + h, int(S.SIZE_BASE) + w])
    return st.advanced([10] * count)


def test_entropy_k_spot_values():
    table = {0: 14, 2: 96, 4: 539, 5: 1000, 6: 1462, 8: 1905, 10: 1987}
    h = torch.tensor([float(x) for x in table])
    assert P.entropy_top_k(h).tolist() == list(table.values())
    for x, k in table.items():
        # independent closed form with Python's round-half-even
        ref = min(max(round(1 + 1999 / (1 + math.exp(-(min(max(x, 0), 10) - 5)))), 1), 2000)
        assert ref == k == P.entropy_top_k_scalar(float(x))
    # clamping outside [0, 10]
    assert P.entropy_top_k(torch.tensor([-3.0, 50.0])).tolist() == [14, 1987]


def test_entropy_matches_closed_form():
    n = 1000
    s = torch.full((1, V), float("-inf"))
    s[0, :n] = 0.3
    assert P.entropy(s).item() == pytest.approx(math.log(n), rel=1e-5)
    assert P.entropy(torch.zeros(1, V)).item() == pytest.approx(math.log(V), rel=1e-5)


def test_top_k_keeps_ties():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.0]])
    out = P.top_k_filter(s, torch.tensor([1]))
    assert torch.isfinite(out).tolist() == [[False, True, True, False, False]]
    out = P.top_k_filter(s, torch.tensor([3]))
    assert torch.isfinite(out).sum().item() == 3
    # per-row k
    s2 = torch.arange(10.0).repeat(2, 1)
    out = P.top_k_filter(s2, torch.tensor([2, 5]))
    assert torch.isfinite(out).sum(-1).tolist() == [2, 5]


def test_cfg_combine_only_inside_grid(image_mask):
    torch.manual_seed(0)
    cond, uncond = torch.randn(2, V), torch.randn(1, V)
    states = [P.state_from_prompt([0, 5]), grid_state()]
    cfg = P.SamplingConfig(temperature=1.0, cfg=0.8, text_top_k=V, entropy_top_k=False)
    out = P.process_scores(cond, states, cfg, image_mask, uncond=uncond)
    assert torch.equal(out[0], cond[0])  # text row: untouched
    ref = 0.8 * cond[1] + 0.2 * uncond[0]
    ref = ref.masked_fill(~image_mask, float("-inf"))
    assert torch.allclose(out[1], ref, atol=1e-6)
    # g = 1 ignores the unconditional logits entirely
    out1 = P.process_scores(cond, states, P.SamplingConfig(1.0, 1.0, V, False), image_mask, uncond=uncond)
    assert torch.equal(out1[1], cond[1].masked_fill(~image_mask, float("-inf")))


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (1, 2)])
def test_structure_mask_positions(h, w, image_mask):
    st = grid_state(h, w)
    wl, hl = 4 * w, 4 * h
    generated = 0
    while st.open:
        p = generated + 1
        kind = st.mask_kind()
        s = P.apply_structure_mask(torch.zeros(1, V), torch.tensor([kind]), image_mask)
        finite = torch.isfinite(s[0])
        if p % (wl + 1) == 0:
            assert kind == P.ROW_END and finite.nonzero().flatten().tolist() == [int(S.ROW_END)]
            tok = int(S.ROW_END)
        elif p == (wl + 1) * hl + 1:
            assert kind == P.IMAGE_END and finite.nonzero().flatten().tolist() == [int(S.IMG_END)]
            tok = int(S.IMG_END)
        else:
            assert kind == P.IMAGE and torch.equal(finite, image_mask)
            tok = 65536 + p
        st.update(tok)
        generated += 1
    assert generated == (wl + 1) * hl + 1  # 73 for h = w = 2
    assert st.mask_kind() == P.FREE and not st.in_grid


def test_state_with_header_in_prompt_and_balanced_lq_block():
    lq = [int(S.IMG_START), int(S.SIZE_BASE) + 1, int(S.SIZE_BASE) + 1] + [100] * 20 + [int(S.IMG_END)]
    prompt = [0, 11, 12] + lq + [int(S.EOT), 40, 41]
    st = P.state_from_prompt(prompt)
    assert not st.open
    st = P.state_from_prompt(prompt + [int(S.IMG_START), int(S.SIZE_BASE) + 2, int(S.SIZE_BASE) + 1])
    assert st.in_grid and (st.h_lat, st.w_lat, st.count) == (8, 4, 0)
    # garbage size tokens do not crash: image open, no grid constraints
    bad = P.state_from_prompt([int(S.IMG_START), 5, 7, 9])
    assert bad.open and not bad.in_grid and bad.mask_kind() == P.FREE


def test_entropy_k_inside_image_text_k_outside(image_mask):
    torch.manual_seed(1)
    cond = torch.randn(3, V) * 3
    header_state = P.state_from_prompt([int(S.IMG_START)])  # predicting h: image open, no grid
    states = [P.state_from_prompt([0]), header_state, grid_state()]
    cfg = P.SamplingConfig(temperature=0.9, cfg=1.0, text_top_k=1)
    out, k = P.process_scores(cond, states, cfg, image_mask, return_k=True)
    assert k[0].item() == 1 and torch.isfinite(out[0]).sum().item() == 1
    for row in (1, 2):
        masked = cond[row] if row == 1 else cond[row].masked_fill(~image_mask, float("-inf"))
        expect = P.entropy_top_k_scalar(P.entropy(masked[None]).item())
        assert k[row].item() == expect and torch.isfinite(out[row]).sum().item() == expect


def test_top_k_uses_entropy_before_temperature(image_mask):
    # A peaked distribution: tempering it first (T = 0.25 sharpens) would give a smaller k.
    torch.manual_seed(2)
    cond = torch.randn(1, V) * 2
    st = [P.state_from_prompt([int(S.IMG_START)])]
    cfg = P.SamplingConfig(temperature=0.25, cfg=1.0)
    scores, k = P.process_scores(cond, st, cfg, image_mask, return_k=True)
    k_raw = P.entropy_top_k_scalar(P.entropy(cond).item())
    k_tempered = P.entropy_top_k_scalar(P.entropy(cond / 0.25).item())
    assert k.item() == k_raw != k_tempered
    probs = P.probs_from_scores(scores, cfg)
    ref = torch.softmax(P.top_k_filter(cond, torch.tensor([k_raw])) / 0.25, -1)
    assert torch.allclose(probs, ref, atol=1e-7)
    assert (probs > 0).sum().item() == k_raw


def test_batched_rows_equal_single_rows(image_mask):
    torch.manual_seed(3)
    cond, unc = torch.randn(3, V), torch.randn(2, V)
    states = [grid_state(1, 1, 4), P.state_from_prompt([0]), grid_state(2, 2, 7)]
    cfg = P.SamplingConfig()
    out = P.process_scores(cond, states, cfg, image_mask, uncond=unc)
    for row, u in [(0, unc[0:1]), (1, None), (2, unc[1:2])]:
        single = P.process_scores(cond[row : row + 1], [states[row]], cfg, image_mask, uncond=u)
        assert torch.equal(out[row], single[0])


def test_greedy_and_sampling():
    s = torch.tensor([[0.0, 2.0, 1.0, float("-inf")]])
    g = P.probs_from_scores(s, P.SamplingConfig(temperature=0))
    assert g.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    gen = torch.Generator().manual_seed(0)
    probs = P.probs_from_scores(s, P.SamplingConfig(temperature=1.0)).repeat(20000, 1)
    draws = P.sample(probs, gen)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, probs[0], atol=0.02) and freq[3] == 0
