"""Speculative Jacobi Decoding for PURE (spec §8), batched, on the static-cache engine.

Each iteration feeds one window [pending, carried drafts..., fresh drafts...] (16 tokens by
default) per image in a single forward (all images and their CFG rows together), verifies
the drafts left to right against the model's own per-position distributions, commits the
accepted prefix plus one corrected/bonus token, rolls the cache back by moving the row's slot
counter, and keeps the model's later samples as next drafts. Images accept different numbers
of drafts in the same forward (every row has its own slot counter); the whole iteration —
forward, processors, verification, commit — is tensor code compiled as one step (a CUDA graph
on CUDA) and reads nothing back. `verify` / `residual_distribution` are the scalar statement
of the rule that `batched_verify` implements (tests hold one against the other).

Official deviations fixed by default (spec §8.3), each with a compat switch:
1. fresh drafts and the image mask cover all 16,384 image ids (official SJD's processor allows
   only 4..8195, so upper-range codes could never be produced) - no switch, it is a bug;
2. the unconditional branch sees the AR context [8197, h, w, ...] (`uncond_compat=True`: the
   official one, which also sees the prompt's last 8710, the answer text and re-based positions);
3. per-position entropy top-k (`mean_k_compat=True`: one k from the window-mean entropy);
4. the rejection resample draws from normalise(max(0, p - q)) directly (the official re-applies
   temperature and top-k to it, which changes the distribution and breaks losslessness).
The greedy `jacobi` scheme accepts a draft iff it equals the argmax: output == greedy AR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from pure.engine import DONE, LIVE, NOUT, SEED, SLOT, STEP, TOK, USLOT, get_engine
from pure.generate import DonePoll, GenerationOutput, decode_answer, row_seeds, tokens_needed
from pure.processors import (
    STATE_COLS,
    SamplingConfig,
    advance_t,
    counter_uniform,
    entropy,
    entropy_top_k,
    guided_scores_t,
    process_scores_t,
    sample_with_uniform,
    top_k_static,
)
from pure.tokenizer import ImageCodeMap, SpecialIds


@dataclass
class SJDConfig:
    """Knobs of `speculative_generate`; defaults follow the official `test_pure_jacobi.py`."""

    window: int = 16  # tokens per forward: 1 pending + up to 15 drafts
    active_from: int = 3  # Jacobi only for generated offsets in [active_from, active_until)
    active_until: int = 4150  # = 64*64 + 64 - 10 (official); outside: one token per forward
    scheme: str = "speculative_jacobi"  # or "jacobi" (greedy: accept iff draft == argmax)
    uncond_compat: bool = False  # official SJD unconditional context (bug 2)
    mean_k_compat: bool = False  # one top-k per window from the mean entropy (bug 3)


def residual_distribution(p: torch.Tensor, q: torch.Tensor | None, draft: int) -> torch.Tensor:
    """normalise(max(0, p - q)); q None means the one-hot draft distribution of a fresh draft.
    Falls back to p when p <= q everywhere (only possible when p == q, where nothing is rejected)."""
    if q is None:
        r = p.clone()
        r[draft] = 0.0
    else:
        r = (p - q).clamp_min(0.0)
    total = r.sum()
    return r / total if total > 0 else p


def verify(
    drafts: list[int], q: list[torch.Tensor | None], p: torch.Tensor, uniforms: torch.Tensor, greedy: bool = False
) -> tuple[int, torch.Tensor | None]:
    """Check drafts x_1..x_m (window inputs 1..m) against targets p[0..m-1].

    Returns (n accepted, residual distribution for the token after them or None when all
    were accepted). Accept x_i iff u_i < min(1, p(x_i) / q(x_i)) (greedy: x_i == argmax p)."""
    for i, x in enumerate(drafts):
        target = p[i]
        if greedy:
            ok = int(target.argmax()) == x
        else:
            qx = 1.0 if q[i] is None else float(q[i][x])
            ok = float(uniforms[i]) < min(1.0, float(target[x]) / qx) if qx > 0 else False
        if not ok:
            if greedy:
                return i, torch.nn.functional.one_hot(target.argmax(), target.numel()).float()
            return i, residual_distribution(target, q[i], x)
    return len(drafts), None


def window_scores(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    states: torch.Tensor,
    sampling: SamplingConfig,
    image_mask: torch.Tensor,
    mean_k: bool = False,
) -> torch.Tensor:
    """Processed scores (B, T, V) for every window position (states (B, T, 6)).

    Default: the AR chain per position. `mean_k` (official, bug 3): CFG + structure mask per
    position, then ONE k per row from the entropy averaged over its window positions."""
    B, T, V = cond.shape
    flat = (
        cond.reshape(B * T, V),
        None if uncond is None else uncond.reshape(B * T, V),
        states.reshape(B * T, -1)[:, :STATE_COLS],
    )
    if not mean_k:
        return process_scores_t(*flat, sampling, image_mask).view(B, T, V)
    scores = guided_scores_t(*flat, sampling, image_mask).view(B, T, V)
    k = entropy_top_k(entropy(scores).mean(-1))[:, None].expand(B, T)
    return top_k_static(scores, k, V)


def batched_verify(
    drafts: torch.Tensor,
    probs: torch.Tensor,
    dq: torch.Tensor,
    has_q: torch.Tensor,
    u: torch.Tensor,
    gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor form of :func:`verify` for B rows of T - 1 drafts.

    drafts (B, T-1); probs (B, T, V) targets per window output; dq (B, T-1, V) the draft
    distributions where has_q, else the draft was a fresh one-hot; u (B, T-1) float64 uniforms;
    gate (B, T-1): drafts that may be accepted at all (False: forced stop — Jacobi inactive or
    no budget). Returns n accepted (B,) and the distribution to draw the next token from
    (B, V): the residual after a genuine rejection, else the target at output n (after a
    forced stop, or the bonus when everything was accepted)."""
    T1 = drafts.shape[1]
    px = probs[:, :-1].gather(-1, drafts[..., None])[..., 0].double()
    qx = torch.where(has_q, dq.gather(-1, drafts[..., None])[..., 0].double(), 1.0)
    ok = (qx > 0) & (u < (px / qx.clamp_min(1e-300)).clamp_max(1.0))
    n = (ok & gate).long().cumprod(-1).sum(-1)
    at = n.clamp_max(T1 - 1)[:, None]
    V = probs.shape[-1]
    p_n = probs.gather(1, n[:, None, None].expand(-1, 1, V))[:, 0]
    # one-hot of the draft without F.one_hot, whose range check reads the device on CUDA
    onehot = (torch.arange(V, device=p_n.device) == drafts.gather(1, at)).to(p_n.dtype)
    q_n = torch.where(has_q.gather(1, at), dq.gather(1, at[..., None].expand(-1, 1, V))[:, 0], onehot)
    resid = (p_n - q_n).clamp_min(0.0)
    total = resid.sum(-1, keepdim=True)
    resid = torch.where(total > 0, resid / total.clamp_min(1e-30), p_n)
    genuine = (n < T1) & gate.gather(1, at)[:, 0]
    return n, torch.where(genuine[:, None], resid, p_n)


class _SJDRunner:
    """One compiled SJD iteration for B rows: window forward, per-position chain, batched
    verification, commit, next drafts — all tensors, no value read back."""

    def __init__(self, engine, sjd: SJDConfig, image_mask: torch.Tensor, compile: bool):
        self.engine, self.sjd, self.spec = engine, sjd, engine.spec
        self.pool = image_mask.to(engine.device).nonzero().flatten()  # all 16,384 image ids (bug 1 fixed)
        self.step = engine.compiled(f"sjd_iter{sjd}", self._iter) if compile else self._iter

    def initial(self, S: torch.Tensor):
        B, T, V = self.spec.batch, self.spec.window, self.engine.model.config.vocab_size
        dev = S.device
        drafts = self._fresh(S, torch.arange(T - 1, device=dev)[None].expand(B, -1))
        dq = torch.zeros(B, T - 1, V, device=dev)
        out = torch.zeros(B, self.spec.max_new_tokens + T + 1, dtype=torch.long, device=dev)
        out[:, 0] = S[:, TOK]
        return drafts, dq, torch.zeros(B, T - 1, dtype=torch.bool, device=dev), out

    def _fresh(self, S, j):
        """Uniform random image ids (one-hot draft distribution), per row and draft index j."""
        u = counter_uniform(S[:, SEED, None], S[:, STEP, None], 3000 + j)
        return self.pool[(u * self.pool.numel()).long().clamp_max(self.pool.numel() - 1)]

    def _iter(self, S, drafts, dq, has_q, out):
        spec, sjd = self.spec, self.sjd
        sampling, eos = spec.sampling, spec.eos_id
        B, T = drafts.shape[0], drafts.shape[1] + 1
        i = torch.arange(T - 1, device=S.device)
        done, nout = S[:, DONE].bool(), S[:, NOUT]
        window = torch.cat([S[:, TOK, None], drafts], 1)
        cond, uncond, states, opens = self.engine.window_forward(window, S)
        scores = window_scores(cond, uncond, states, sampling, self.engine.image_mask, sjd.mean_k_compat)
        seed, counter = S[:, SEED, None], S[:, STEP, None]
        greedy = sampling.greedy
        probs = None if greedy else torch.softmax(scores / sampling.temperature, dim=-1)
        offset = nout - 1  # generated offset of the pending token
        active = (offset >= sjd.active_from) & (offset < sjd.active_until) & ~done
        gate = active[:, None] & (i[None] + 1 < spec.max_new_tokens - nout[:, None])  # budget for a correction
        if greedy:  # accept iff the draft is the argmax; the correction is the argmax after them
            n = ((drafts == scores[:, :-1].argmax(-1)) & gate).long().cumprod(-1).sum(-1)
            nxt = scores.gather(1, n[:, None, None].expand(-1, 1, scores.shape[-1]))[:, 0].argmax(-1)
        else:
            n, dist = batched_verify(drafts, probs, dq, has_q, counter_uniform(seed, counter, 1000 + i), gate)
            nxt = sample_with_uniform(dist, counter_uniform(seed[:, 0], counter[:, 0], 4000))
        eos_at = torch.where((drafts == eos) & (i[None] < n[:, None]), i[None], T).amin(-1)
        eos_accepted = eos_at < T  # an accepted end token ends the row there (no correction)
        n = torch.where(eos_accepted, eos_at + 1, n)
        # The model's samples after the correction become the next drafts (q = their target).
        u_draw = counter_uniform(seed, counter, 2000 + torch.arange(T, device=S.device))
        ys = scores.argmax(-1) if greedy else sample_with_uniform(probs, u_draw)
        src = n[:, None] + 1 + i[None]
        carried = src <= T - 1
        srcc = src.clamp_max(T - 1)
        new_drafts = torch.where(carried, ys.gather(1, srcc), self._fresh(S, i[None].expand(B, -1)))
        new_dq = dq if greedy else probs.gather(1, srcc[..., None].expand(-1, -1, probs.shape[-1]))
        # Commit accepted drafts and the correction at the row's output offset.
        live = ~done
        scratch = out.shape[1] - 1
        pos_d = torch.where((i[None] < n[:, None]) & live[:, None], nout[:, None] + i[None], scratch)
        pos_c = torch.where(live & ~eos_accepted, nout + n, scratch)
        out = out.scatter(1, torch.cat([pos_d, pos_c[:, None]], 1), torch.cat([drafts, nxt[:, None]], 1))
        new_nout = torch.where(live, nout + n + (~eos_accepted).long(), nout)
        new_done = done | (live & (eos_accepted | (nxt == eos))) | (new_nout >= spec.max_new_tokens)
        st_n = states.gather(1, n[:, None, None].expand(-1, 1, states.shape[-1]))[:, 0]
        tok = torch.where(live & ~eos_accepted, nxt, torch.where(live, eos, S[:, TOK]))
        S2 = torch.cat(
            [
                torch.where(live[:, None], advance_t(st_n, tok), S[:, :STATE_COLS]),
                torch.stack(
                    [
                        tok,
                        torch.where(live, S[:, SLOT] + n + 1, S[:, SLOT]),
                        torch.where(live, self.engine.next_uslot(S, opens, n), S[:, USLOT]),
                        new_done.long(),
                        new_nout,
                        S[:, STEP] + 1,
                        S[:, SEED],
                        S[:, LIVE] + live.long(),
                    ],
                    1,
                ),
            ],
            1,
        )
        return S2, new_drafts, new_dq, carried, out


@torch.no_grad()
def speculative_generate(
    model,
    prompts,
    sampling: SamplingConfig | None = None,
    sjd: SJDConfig | None = None,
    image_mask: torch.Tensor | None = None,
    max_new_tokens: int = 11776,
    generator: torch.Generator | None = None,
    seed: int | Sequence[int] | None = None,
    eos_id: int = SpecialIds.EOT,
    code_map: ImageCodeMap | None = None,
    tokenizer=None,
    *,
    max_text_tokens: int | None = None,
    compile: bool | None = None,
    poll_every: int = 8,
) -> GenerationOutput:
    """SJD counterpart of `pure.generate.generate` (same output type, same seeding), batched:
    every row keeps its own cache slot counter, so rows accept different numbers of drafts in
    the same forward. `compile` (default: on CUDA) compiles the whole iteration (forward +
    verification); the loop asks whether all rows are done every `poll_every` iterations.
    `max_text_tokens` sizes the answer as in `pure.generate.tokens_needed`."""
    sampling, sjd = sampling or SamplingConfig(), sjd or SJDConfig()
    if sjd.scheme not in ("jacobi", "speculative_jacobi"):
        raise ValueError(f"unknown SJD scheme {sjd.scheme!r}")
    if sjd.window < 2:
        raise ValueError("SJD needs a window of at least 2 tokens")
    if sjd.scheme == "jacobi":  # greedy by definition: every token is an argmax
        sampling = replace(sampling, temperature=0.0)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("speculative_generate: every prompt needs at least one token")
    device = model.lm_head.weight.device
    image_mask = (ImageCodeMap.synthetic().image_mask() if image_mask is None else image_mask).to(device)
    seeds = row_seeds(len(prompts), seed, generator)
    max_new_tokens = tokens_needed(prompts, eos_id, max_new_tokens, max_text_tokens)
    engine = get_engine(
        model,
        prompts,
        sampling,
        image_mask,
        max_new_tokens,
        eos_id,
        window=sjd.window,
        uncond_reset=not sjd.uncond_compat,
        compile=compile,
    )
    runner = _SJDRunner(engine, sjd, image_mask, engine.spec.compile)
    S, _, _ = engine.start(prompts, seeds)
    S[:, DONE] |= (S[:, NOUT] >= max_new_tokens).long()  # a budget of one token is spent already
    carry = runner.initial(S)
    poll = DonePoll(device, poll_every)
    forwards = 1
    while forwards <= max_new_tokens and not poll(forwards, S[:, DONE]):
        S, *carry = engine.call(runner.step, S, *carry)
        forwards += 1
    table = torch.cat([S[:, [NOUT, LIVE]], carry[-1]], 1).tolist()  # the one read-out of the run
    n_out, live, out = [r[0] for r in table], [r[1] for r in table], [r[2:] for r in table]
    tokens, finished = [], []
    for row, n in zip(out, n_out, strict=True):
        row = row[:n]
        fin = bool(row) and row[-1] == eos_id
        tokens.append(row[:-1] if fin else row)
        finished.append(fin)
    # forwards until the last row finished (idle iterations before the poll noticed are not counted)
    result = GenerationOutput(tokens=tokens, finished=finished, forwards=1 + max(live))
    return decode_answer(result, code_map, tokenizer, prompts) if code_map is not None else result
