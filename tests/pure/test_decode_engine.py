"""Fixed-shape decoding (pure/engine.py, issue 9): tensor state == ImageState, tensor chain ==
the list chain, batched verification == the scalar rule, no device read per token, batched
images == single runs under per-image seeds, batched SJD == greedy AR per image, compiled ==
eager (logits to 1e-5 in fp32, same tokens)."""

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pure.engine import release_engines
from pure.generate import generate, tokens_needed
from pure.jacobi import SJDConfig, batched_verify, residual_distribution, speculative_generate, verify
from pure.processors import (
    ImageState,
    SamplingConfig,
    advance_t,
    in_grid_t,
    mask_kind_t,
    process_scores,
    process_scores_t,
    state_tensor,
)
from pure.tokenizer import SpecialIds as S

V = 73728


def header(g):
    return [S.IMG_START, S.SIZE_BASE + g, S.SIZE_BASE + g]


def test_tensor_state_follows_image_state():
    rng = random.Random(0)
    vocab = [S.IMG_START, S.IMG_END, S.ROW_END, S.SIZE_BASE + 1, S.SIZE_BASE + 2, S.SIZE_BASE + 70, 5, 70000, 9100]
    seqs = [[rng.choice(vocab) for _ in range(60)] for _ in range(8)]
    states = [ImageState() for _ in seqs]
    st = state_tensor(states)
    for t in range(60):
        tok = torch.tensor([s[t] for s in seqs])
        for s, x in zip(states, tok.tolist(), strict=True):
            s.update(x)
        st = advance_t(st, tok)
        assert st.tolist() == state_tensor(states).tolist()
        assert mask_kind_t(st).tolist() == [s.mask_kind() for s in states]
        assert in_grid_t(st).tolist() == [s.in_grid for s in states]


@pytest.mark.parametrize(
    "sampling", [SamplingConfig(0.9, 0.8, 1, True), SamplingConfig(0.0, 0.8), SamplingConfig(0.7, 3.0, 5, False)]
)
def test_tensor_chain_equals_list_chain(image_mask, sampling):
    torch.manual_seed(1)
    prompts = [[0], [0, *header(1)], [0, *header(1), 70000, 5, 6, 7], [0, *header(1)] + [70000] * 20, [0, S.IMG_START]]
    states = [ImageState().advanced(p) for p in prompts]  # free, image, row end, image end, open without grid
    cond, uncond = torch.randn(5, V) * 3, torch.randn(5, V) * 3
    rows = [i for i, s in enumerate(states) if s.in_grid]
    ref = process_scores(cond, states, sampling, image_mask, uncond[rows], rows)
    got = process_scores_t(cond, uncond, state_tensor(states), sampling, image_mask)
    assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
    assert torch.allclose(got[torch.isfinite(got)], ref[torch.isfinite(ref)])


def test_batched_verify_equals_scalar_rule():
    g = torch.Generator().manual_seed(0)
    B, T, Vs = 64, 5, 6
    for _ in range(3):
        probs = torch.rand(B, T, Vs, generator=g) ** 4
        probs[probs < 0.05] = 0
        probs = (probs + 1e-3 * (probs.sum(-1, keepdim=True) == 0)) / (probs + 1e-9).sum(-1, keepdim=True)
        dq = torch.softmax(torch.randn(B, T - 1, Vs, generator=g) * 2, -1)
        has_q = torch.rand(B, T - 1, generator=g) < 0.5
        drafts = torch.randint(Vs, (B, T - 1), generator=g)
        u = torch.rand(B, T - 1, generator=g, dtype=torch.float64)
        gate = torch.rand(B, generator=g)[:, None] < 0.8
        gate = gate & (torch.arange(T - 1) < torch.randint(1, T, (B, 1), generator=g))
        n, dist = batched_verify(drafts, probs, dq, has_q, u, gate)
        for b in range(B):
            m = int(gate[b].long().cumprod(0).sum())  # drafts that may be accepted at all
            qs = [dq[b, i] if has_q[b, i] else None for i in range(m)]
            n_ref, resid = verify(drafts[b, :m].tolist(), qs, probs[b].double(), u[b, :m])
            assert int(n[b]) == n_ref
            want = resid if resid is not None else probs[b, n_ref].double()
            assert torch.allclose(dist[b].double(), want, atol=1e-6)
    # the residual of a fresh one-hot draft
    p = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])
    n, dist = batched_verify(
        torch.tensor([[1]]),
        p,
        torch.zeros(1, 1, 3),
        torch.tensor([[False]]),
        torch.tensor([[0.9]], dtype=torch.float64),
        torch.tensor([[True]]),
    )
    assert int(n) == 0 and torch.allclose(dist[0], residual_distribution(p[0, 0], None, 1))


class CountSyncs(TorchDispatchMode):
    """Counts reads of a tensor value into Python (what .item(), bool(t), int(t) dispatch to)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


def count_reads(fn, monkeypatch) -> int:
    calls = []
    for name in ("tolist", "cpu", "numpy", "item"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            calls.append(1)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    with CountSyncs() as mode:
        fn()
    monkeypatch.undo()
    return mode.n + len(calls)


def test_decode_loop_reads_no_device_value_per_token(model, image_mask, monkeypatch, one_thread):
    prompts = [[0, 9100, S.EOT, *header(2)], [0, 9200, 9300, S.EOT]]
    sampling = SamplingConfig(temperature=0.9, cfg=0.8)

    def run(n, poll_every=1000):
        out = generate(model, prompts, sampling, image_mask, max_new_tokens=n, seed=[1, 2], poll_every=poll_every)
        assert out.forwards == n

    run(4)  # build the engine outside the counted runs
    few, many = count_reads(lambda: run(6), monkeypatch), count_reads(lambda: run(30), monkeypatch)
    assert few == many and few <= 3  # a fixed handful (the engine key, the one final read-out)
    # polling for finished rows is the only per-step read, and it is rationed
    assert count_reads(lambda: run(30, poll_every=10), monkeypatch) == many + 2


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_equals_sdpa(model, image_mask, monkeypatch, one_thread):
    """The FlexAttention block-mask path gives the SDPA path's logits and tokens (AR with an
    image opening mid-answer, and SJD windows), eager."""
    import pure.engine

    prompts = [[0, 9100, S.EOT, *header(1)], [0, 9200, 9300, S.EOT]]
    outs = {}
    for attention in ("sdpa", "flex"):
        monkeypatch.setattr(pure.engine, "ATTENTION", attention)
        ar = generate(
            model,
            prompts,
            SamplingConfig(),
            image_mask,
            max_new_tokens=10,
            seed=[1, 2],
            return_logits=True,
            return_uncond_logits=True,
        )
        sj = speculative_generate(
            model,
            prompts,
            SamplingConfig(),
            SJDConfig(active_from=0, window=4),
            image_mask,
            max_new_tokens=10,
            seed=[1, 2],
        )
        outs[attention] = (ar, sj)
    (ar_s, sj_s), (ar_f, sj_f) = outs["sdpa"], outs["flex"]
    assert ar_f.tokens == ar_s.tokens and sj_f.tokens == sj_s.tokens
    assert torch.allclose(ar_f.logits, ar_s.logits, atol=1e-5)
    assert torch.allclose(ar_f.uncond_logits[0], ar_s.uncond_logits[0], atol=1e-5)  # row 0 is inside its grid


def test_image_only_budget_is_known_in_advance(model, image_mask, one_thread):
    """Prompts ending in <8197><h><w> with the image end as stop token: the loop length is the
    block length (the structure mask forces the end token there), whatever max_new_tokens says."""
    prompts = [[0, 9100, S.EOT, *header(1)], [0, 9200, S.EOT, *header(2), 70000, 5]]
    assert tokens_needed(prompts, S.IMG_END, 8192) == 71 and tokens_needed(prompts, S.EOT, 8192) == 8192
    assert tokens_needed(prompts[:1] + [[0, 9100]], S.IMG_END, 8192) == 8192  # one prompt is not in a grid
    out = generate(model, prompts, SamplingConfig(), image_mask, max_new_tokens=8192, seed=[0, 1], eos_id=S.IMG_END)
    assert out.finished == [True, True] and [len(t) for t in out.tokens] == [20, 70]
    assert out.ids.shape[1] == 71  # no step beyond the longest block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync detector (the CPU count above is the must-show)")
def test_cuda_decode_steps_never_synchronise(image_mask):
    """AR steps and SJD iterations under torch.cuda.set_sync_debug_mode("error")."""
    from pure.engine import get_engine
    from pure.jacobi import _SJDRunner
    from pure.model import ChameleonForCausalLM, chameleon_config

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ChameleonForCausalLM(chameleon_config("tiny")).eval()
    prompts = [[0, 9100, S.EOT, *header(1)], [0, 9200, 9300, S.EOT]]
    engine = get_engine(model, prompts, SamplingConfig(), image_mask.cuda(), 20, S.EOT, compile=False)
    S_, _, _ = engine.start(prompts, [0, 1])
    sjd = get_engine(model, prompts, SamplingConfig(), image_mask.cuda(), 20, S.EOT, window=4, compile=False)
    runner = _SJDRunner(sjd, SJDConfig(active_from=0, window=4), image_mask.cuda(), compile=False)
    T_, _, _ = sjd.start(prompts, [0, 1])
    carry = runner.initial(T_)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):
            S_, _, _ = engine.call(engine.ar_step, S_)
            T_, *carry = sjd.call(runner.step, T_, *carry)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    release_engines()


def test_batched_sjd_greedy_equals_greedy_ar_per_image(model, image_mask, one_thread):
    # an 8x8 grid (73 tokens), a 4x4 grid (21) and a prompt that leaves the answer open
    prompts = [[0, 9100, 9200, S.EOT, 9300, *header(2)], [0, 9500, S.EOT, *header(1)], [0, 9600, 9700, S.EOT]]
    greedy = SamplingConfig(temperature=0.0, cfg=0.8)
    sjd = speculative_generate(
        model,
        prompts,
        greedy,
        SJDConfig(scheme="jacobi", active_from=0, window=8),
        image_mask,
        max_new_tokens=73,
        seed=0,
        eos_id=S.IMG_END,
    )
    for b, p in enumerate(prompts):
        ar = generate(model, [p], greedy, image_mask, max_new_tokens=73, eos_id=S.IMG_END)
        assert sjd.tokens[b] == ar.tokens[0] and sjd.finished[b] == ar.finished[0]
    assert sjd.finished[:2] == [True, True] and len(sjd.tokens[0]) == 72
    one = speculative_generate(
        model,
        prompts[:1],
        greedy,
        SJDConfig(scheme="jacobi", active_from=0, window=8),
        image_mask,
        max_new_tokens=73,
        seed=0,
        eos_id=S.IMG_END,
    )
    assert one.tokens[0] == sjd.tokens[0] and one.forwards < 73  # fewer forwards than tokens


def test_batched_sampling_equals_single_runs(model, image_mask, one_thread):
    """AR and SJD: a batch of B images reproduces B single runs with the same per-image seeds."""
    prompts = [[0, 9100, S.EOT, *header(1)], [0, 9500, 9600, 9700, S.EOT, *header(1)]]
    sampling = SamplingConfig(temperature=0.9, cfg=0.8)
    ar = generate(model, prompts, sampling, image_mask, max_new_tokens=21, seed=[7, 9], eos_id=S.IMG_END)
    sjd_cfg = SJDConfig(active_from=0, window=6)
    sj = speculative_generate(
        model, prompts, sampling, sjd_cfg, image_mask, max_new_tokens=21, seed=[7, 9], eos_id=S.IMG_END
    )
    for b, s in enumerate((7, 9)):
        assert (
            ar.tokens[b]
            == generate(model, [prompts[b]], sampling, image_mask, max_new_tokens=21, seed=s, eos_id=S.IMG_END).tokens[
                0
            ]
        )
        assert (
            sj.tokens[b]
            == speculative_generate(
                model, [prompts[b]], sampling, sjd_cfg, image_mask, max_new_tokens=21, seed=s, eos_id=S.IMG_END
            ).tokens[0]
        )
    assert all(len(t) == 20 for t in ar.tokens + sj.tokens)  # 4 rows of (4 codes + row end)
    assert ar.tokens[0] != ar.tokens[1]


@pytest.mark.slow
def test_compiled_decoding_equals_eager(model, image_mask, one_thread):
    """torch.compile with inductor (C++ on CPU, fp32) of the AR step: same logits, same tokens."""
    prompts = [[0, 9100, 9200, S.EOT, *header(1)], [0, 9400, S.EOT]]
    outs = {}
    for flag in (False, True):
        release_engines()
        outs[flag] = generate(
            model,
            prompts,
            SamplingConfig(temperature=0.0, cfg=0.8),
            image_mask,
            max_new_tokens=12,
            return_logits=True,
            compile=flag,
        )
    release_engines()
    assert outs[True].tokens == outs[False].tokens
    assert torch.allclose(outs[True].logits, outs[False].logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_sjd_iteration_traces_whole(model, image_mask, monkeypatch, one_thread):
    """The SJD iteration compiles as ONE graph (fullgraph: no graph break, cache writes
    functionalised) and gives the eager tokens; traced with the aot_eager backend because an
    inductor build of this graph takes minutes on CI (the AR test above covers inductor)."""
    import pure.engine

    monkeypatch.setattr(pure.engine, "COMPILE_BACKEND", "aot_eager")
    prompts = [[0, 9100, 9200, S.EOT, *header(1)], [0, 9400, S.EOT, *header(1)]]
    outs = {}
    for sampling in (SamplingConfig(temperature=0.9, cfg=0.8),):  # the sampling verifier (greedy is its subset)
        for flag in (False, True):
            release_engines()
            outs[flag] = speculative_generate(
                model,
                prompts,
                sampling,
                SJDConfig(active_from=0, window=4),
                image_mask,
                max_new_tokens=21,
                seed=[3, 4],
                compile=flag,
            )
        assert outs[True].tokens == outs[False].tokens and outs[True].forwards == outs[False].forwards
    release_engines()
