"""Speculative Jacobi Decoding for PURE (spec §8), self-contained on our KV cache.

Each iteration feeds one window [pending, carried drafts..., fresh drafts...] (16 tokens by
default) in a single forward, verifies the drafts left to right against the model's own
per-position distributions, commits the accepted prefix plus one corrected/bonus token, rolls
the cache back to the committed length, and keeps the model's later samples as next drafts.

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

from dataclasses import dataclass, replace

import torch

from pure.generate import Decoder, GenerationOutput, decode_answer
from pure.processors import (ImageState, SamplingConfig, cfg_rows, entropy, entropy_top_k, probs_from_scores,
                             process_scores, sample, top_k_filter)
from pure.tokenizer import ImageCodeMap, SpecialIds


@dataclass
class SJDConfig:
    """Knobs of `speculative_generate`; defaults follow the official `test_pure_jacobi.py`."""

    window: int = 16              # tokens per forward: 1 pending + up to 15 drafts
    active_from: int = 3          # Jacobi only for generated offsets in [active_from, active_until)
    active_until: int = 4150      # = 64*64 + 64 - 10 (official); outside: one token per forward
    scheme: str = "speculative_jacobi"  # or "jacobi" (greedy: accept iff draft == argmax)
    uncond_compat: bool = False   # official SJD unconditional context (bug 2)
    mean_k_compat: bool = False   # one top-k per window from the mean entropy (bug 3)


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


def verify(drafts: list[int], q: list[torch.Tensor | None], p: torch.Tensor, uniforms: torch.Tensor,
           greedy: bool = False) -> tuple[int, torch.Tensor | None]:
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


def _window_probs(cond, uncond, states, sampling, image_mask, mean_k: bool):
    """Processed per-position probabilities (T, V) for one sample's window."""
    rows = cfg_rows(states)
    u = uncond[rows] if (uncond is not None and rows) else None
    if not mean_k:
        return probs_from_scores(process_scores(cond, states, sampling, image_mask, u, rows), sampling)
    # Official: CFG + structure mask per position, then ONE k from the entropy averaged over
    # the window, applied to every position.
    wide = SamplingConfig(sampling.temperature, sampling.cfg, cond.shape[-1], entropy_top_k=False)
    scores = process_scores(cond, states, wide, image_mask, u, rows)
    k = entropy_top_k(entropy(scores).mean()).expand(scores.shape[0])
    return probs_from_scores(top_k_filter(scores, k), sampling)


@torch.no_grad()
def sjd_decode(dec: Decoder, sampling: SamplingConfig, sjd: SJDConfig, image_mask: torch.Tensor,
               max_new_tokens: int, generator: torch.Generator | None, eos_id: int = SpecialIds.EOT):
    """SJD for a prefilled single-sample Decoder; returns (tokens incl. final EOT if any, finished)."""
    if dec.B != 1:
        raise ValueError("sjd_decode works on one sample at a time (the cache has one length)")
    if sjd.scheme not in ("jacobi", "speculative_jacobi"):
        raise ValueError(f"unknown SJD scheme {sjd.scheme!r}")
    if sjd.scheme == "jacobi":  # greedy by definition: every token is an argmax
        sampling = replace(sampling, temperature=0.0)
    greedy = sampling.greedy
    device = dec.device
    draft_pool = image_mask.nonzero().flatten()  # all 16,384 image ids (bug 1 fixed)
    cond, uncond = dec.prefill()
    state = ImageState().advanced(dec.fed[0])
    probs = _window_probs(cond, uncond, [state], sampling, image_mask, sjd.mean_k_compat)
    pending = int(sample(probs[0], generator))
    out: list[int] = [pending]
    carried: list[int] = []
    carried_q: list[torch.Tensor] = []
    while out[-1] != eos_id and len(out) < max_new_tokens:
        offset = len(out) - 1  # generated offset of the pending token
        active = sjd.active_from <= offset < sjd.active_until
        T = min(sjd.window if active else 1, max_new_tokens - len(out))
        carried, carried_q = carried[: T - 1], carried_q[: T - 1]
        n_fresh = T - 1 - len(carried)
        fresh = draft_pool[torch.randint(draft_pool.numel(), (n_fresh,), generator=generator,
                                         device=generator.device if generator is not None else "cpu")
                           .to(device)].tolist() if n_fresh > 0 else []
        drafts = carried + fresh
        q: list[torch.Tensor | None] = list(carried_q) + [None] * n_fresh
        window = [pending] + drafts
        c, u = dec.forward([window])
        states, st = [], state
        for tok in window:
            st = st.advanced([tok])
            states.append(st)
        p = _window_probs(c[0], None if u is None else u[0], states, sampling, image_mask, sjd.mean_k_compat)
        uniforms = torch.rand(len(drafts), generator=generator,
                              device=generator.device if generator is not None else "cpu")
        n, resid = verify(drafts, q, p, uniforms, greedy)
        # an accepted end-of-turn ends the answer right there
        accepted = drafts[:n]
        if eos_id in accepted:
            n = accepted.index(eos_id) + 1
            out.extend(accepted[:n])
            dec.rollback(len(dec.fed[0]) - len(window) + 1 + n)
            break
        if resid is None:  # all accepted: the bonus token comes from the last position
            resid = p[-1]
        nxt = int(sample(resid, generator))
        # Model samples beyond the correction become the next drafts (q = their distribution).
        if n + 1 < T:
            tail_p = p[n + 1:]
            ys = sample(tail_p, generator).tolist()
            carried, carried_q = ys, list(tail_p)
        else:
            carried, carried_q = [], []
        dec.rollback(len(dec.fed[0]) - len(window) + 1 + n)  # keep pending + accepted drafts
        state = st if n == len(drafts) else state.advanced([pending] + accepted)
        out.extend(accepted + [nxt])
        pending = nxt
    out = out[:max_new_tokens]
    finished = bool(out) and out[-1] == eos_id
    return out, finished


@torch.no_grad()
def speculative_generate(model, prompts, sampling: SamplingConfig | None = None, sjd: SJDConfig | None = None,
                         image_mask: torch.Tensor | None = None, max_new_tokens: int = 11776,
                         generator: torch.Generator | None = None, seed: int | None = None,
                         eos_id: int = SpecialIds.EOT, code_map: ImageCodeMap | None = None,
                         tokenizer=None) -> GenerationOutput:
    """SJD counterpart of `pure.generate.generate` (same output type; samples run one by one
    because accepted lengths differ per sample and the cache rows share one length)."""
    sampling, sjd = sampling or SamplingConfig(), sjd or SJDConfig()
    device = model.lm_head.weight.device
    image_mask = (ImageCodeMap.synthetic().image_mask() if image_mask is None else image_mask).to(device)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    tokens, finished, forwards = [], [], 0
    for prompt in prompts:
        dec = Decoder(model, [prompt], sampling.uses_cfg, capacity=len(prompt) + max_new_tokens + sjd.window)
        if sjd.uncond_compat:
            dec.uncond_fixed_base = len(prompt) - 1  # official: mask prompt[:-1], keep its 8710
        toks, fin = sjd_decode(dec, sampling, sjd, image_mask, max_new_tokens, generator, eos_id)
        tokens.append(toks[:-1] if fin else toks)
        finished.append(fin)
        forwards += dec.forwards
    result = GenerationOutput(tokens=tokens, finished=finished, forwards=forwards)
    return decode_answer(result, code_map, tokenizer, prompts) if code_map is not None else result
