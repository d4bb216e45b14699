"""Speculative Jacobi Decoding (spec §8, §12.6): greedy SJD == greedy AR with fewer forwards,
acceptance rule with fixed uniforms, residual resampling keeps the target distribution, and
the rolled-back KV cache equals a fresh cache over the committed tokens."""
import torch

from pure.generate import Decoder, decode_answer, generate
from pure.jacobi import SJDConfig, residual_distribution, sjd_decode, speculative_generate, verify
from pure.processors import SamplingConfig
from pure.tokenizer import ImageCodeMap, SpecialIds as S


def header(g):
    return [S.IMG_START, S.SIZE_BASE + g, S.SIZE_BASE + g]


def test_greedy_sjd_equals_greedy_ar_with_fewer_forwards(model, image_mask):
    prompt = [0, 9100, 9200, S.EOT, 9300] + header(2)  # 8x8 latents: 73 tokens after <h><w>
    greedy = SamplingConfig(temperature=0.0, cfg=0.8)
    ar = generate(model, [prompt], greedy, image_mask, max_new_tokens=73)
    sjd = speculative_generate(model, [prompt], greedy, SJDConfig(scheme="jacobi", active_from=0),
                               image_mask, max_new_tokens=73, seed=0, code_map=ImageCodeMap.synthetic())
    assert sjd.tokens == ar.tokens
    codes = sjd.images[0]
    assert codes is not None and codes.shape == (8, 8)
    # both id ranges are produced (official SJD could never emit 65536..73727, bug 1)
    toks = torch.tensor(sjd.tokens[0])
    assert (toks >= 65536).any() and ((toks >= 4) & (toks < 8196)).any()
    # forwards include the prefill; spec §8.4 reports 56-59 vs 73 on a tiny model
    print(f"AR forwards {ar.forwards}, SJD forwards {sjd.forwards} for 73 image tokens")
    assert sjd.forwards < ar.forwards - 5
    # the speculative scheme at temperature 0 is the same greedy decoder
    spec = speculative_generate(model, [prompt], greedy, SJDConfig(active_from=0), image_mask,
                                max_new_tokens=30, seed=1)
    assert spec.tokens[0] == ar.tokens[0][:30]


def test_acceptance_rule_with_fixed_uniforms():
    V = 6
    p = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.4, 0.0],
                      [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],
                      [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]])
    q_carried = torch.tensor([0.0, 0.6, 0.2, 0.1, 0.1, 0.0])
    # fresh draft (q one-hot): accept iff u < p(x)
    assert verify([1], [None], p, torch.tensor([0.29]))[0] == 1
    n, r = verify([1], [None], p, torch.tensor([0.31]))
    assert n == 0 and torch.allclose(r, torch.tensor([0.1, 0.0, 0.2, 0.0, 0.4, 0.0]) / 0.7)
    # carried draft: accept iff u < p(x)/q(x) = 0.3/0.6
    assert verify([1], [q_carried], p, torch.tensor([0.49]))[0] == 1
    n, r = verify([1], [q_carried], p, torch.tensor([0.51]))
    assert n == 0 and torch.allclose(r, (p[0] - q_carried).clamp_min(0) / (p[0] - q_carried).clamp_min(0).sum())
    # p(x) >= q(x): always accepted; stop at the first rejection and report its residual
    drafts, qs = [4, 0, 3], [q_carried, None, None]
    assert verify(drafts, qs, p, torch.tensor([0.999, 0.4, 0.19])) == (3, None)
    n, r = verify(drafts, qs, p, torch.tensor([0.999, 0.4, 0.21]))  # p[2](3) = 0.2
    assert n == 2 and torch.allclose(r, torch.tensor([0.2, 0.2, 0.2, 0.0, 0.1, 0.1]) / 0.8)
    n, r = verify(drafts, qs, p, torch.tensor([0.999, 0.6, 0.0]))  # p[1](0) = 0.5
    assert n == 1 and r[0] == 0 and torch.isclose(r.sum(), torch.tensor(1.0))
    # zero target probability is never accepted
    assert verify([3], [None], p, torch.tensor([0.0]))[0] == 0
    # greedy: accept iff argmax
    assert verify([4, 1], [None, None], p, torch.zeros(2), greedy=True)[0] == 1
    assert V == p.shape[1]


def test_residual_resampling_preserves_target_distribution():
    g = torch.Generator().manual_seed(0)
    V = 7
    for _ in range(5):
        p = torch.rand(V, generator=g) ** 3
        p /= p.sum()
        q = torch.rand(V, generator=g) ** 3
        q /= q.sum()
        accept = torch.minimum(torch.ones(V), p / q)
        reject_mass = (q * (1 - accept)).sum()
        marginal = q * accept + reject_mass * residual_distribution(p, q, 0)
        assert torch.allclose(marginal, p, atol=1e-6)
        # one-hot draft at x: x with prob p(x), else the residual
        for x in range(V):
            onehot = p[x] * torch.nn.functional.one_hot(torch.tensor(x), V) + (1 - p[x]) * residual_distribution(p, None, x)
            assert torch.allclose(onehot, p, atol=1e-6)
    # Monte Carlo through verify() itself
    p = torch.tensor([0.05, 0.4, 0.25, 0.0, 0.3])
    q = torch.tensor([0.3, 0.1, 0.1, 0.4, 0.1])
    n_draws, counts = 20000, torch.zeros(5)
    xs = torch.multinomial(q, n_draws, replacement=True, generator=g)
    us = torch.rand(n_draws, generator=g)
    for x, u in zip(xs.tolist(), us):
        n, r = verify([x], [q], p[None], u[None])
        counts[x if n == 1 else int(torch.multinomial(r, 1, generator=g))] += 1
    assert torch.allclose(counts / n_draws, p, atol=0.015)


def test_kv_cache_after_rollback_equals_fresh_cache(model, image_mask):
    prompt = [0, 9100, 9200, S.EOT] + header(1)
    dec = Decoder(model, [prompt], use_cfg=True)
    toks, _ = sjd_decode(dec, SamplingConfig(temperature=0.9, cfg=0.8), SJDConfig(active_from=0), image_mask,
                         max_new_tokens=30, generator=torch.Generator().manual_seed(4))
    fed = dec.fed[0]
    assert fed == prompt + toks[: len(fed) - len(prompt)] and dec.cache.length == len(fed)
    fresh = model.new_cache(1)
    model(torch.tensor([fed]), cache=fresh)
    start = prompt.index(S.IMG_START)
    fresh_u = model.new_cache(1)
    model(torch.tensor([fed[start:]]), cache=fresh_u)
    n = len(fed)
    for layer in range(len(fresh.keys)):
        for got, ref in ((dec.cache.keys[layer], fresh.keys[layer]), (dec.cache.values[layer], fresh.values[layer])):
            assert torch.allclose(got[0, :, :n], ref[0, :, :n], atol=1e-5)
        for got, ref in ((dec.cache.keys[layer], fresh_u.keys[layer]), (dec.cache.values[layer], fresh_u.values[layer])):
            assert torch.allclose(got[1, :, start:n], ref[0, :, : n - start], atol=1e-5)
    assert not dec.cache.key_mask[1, :start].any() and dec.cache.key_mask[1, start:n].all()


def test_compat_flags(model, image_mask):
    # official uncond context: everything from the prompt's last 8710 on, positions from 0
    prompt = [0, 9100, S.EOT]
    dec = Decoder(model, [prompt], use_cfg=True)
    dec.uncond_fixed_base = len(prompt) - 1
    dec.prefill()
    stream = [9300] + header(1) + [70000, 5000]
    _, unc = dec.forward([stream])
    ref = model(torch.tensor([[S.EOT] + stream]))[0, 1:]
    assert torch.allclose(unc[0], ref, atol=1e-4, rtol=1e-4)
    # both compat switches together still produce a well-formed image
    prompt = [0, 9100, S.EOT] + header(1)
    out = speculative_generate(model, [prompt], SamplingConfig(),
                               SJDConfig(active_from=0, uncond_compat=True, mean_k_compat=True), image_mask,
                               max_new_tokens=21, seed=0)
    assert decode_answer(out, ImageCodeMap.synthetic(), prompts=[prompt]).images[0].shape == (4, 4)


def test_mean_k_compat_uses_one_k_per_window(image_mask):
    from pure.jacobi import _window_probs
    from pure.processors import ImageState, entropy, entropy_top_k

    torch.manual_seed(5)
    cond = torch.randn(3, 73728) * torch.tensor([[1.0], [3.0], [6.0]])  # very different entropies
    states = [ImageState().advanced([S.IMG_START])] * 3  # image open, no grid yet: no mask, no CFG
    cfg = SamplingConfig(temperature=0.9, cfg=1.0)
    per_pos = (_window_probs(cond, None, states, cfg, image_mask, mean_k=False) > 0).sum(-1)
    assert per_pos.unique().numel() == 3
    mean_k = (_window_probs(cond, None, states, cfg, image_mask, mean_k=True) > 0).sum(-1)
    assert mean_k.tolist() == [int(entropy_top_k(entropy(cond).mean()))] * 3
