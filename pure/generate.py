"""Autoregressive PURE decoding (spec §7): the loop around pure/engine.py, and answer parsing.

`generate` prefills the prompts, then runs one compiled step per token over a static KV cache
with the conditional and unconditional (CFG) rows of every image in one forward; no device
value is read per token (see pure/engine.py for the cache layout and the device-side state).
The unconditional rows see exactly the AR context [8197, h, w, codes so far] with positions
from 0 (spec §7.2); prompts of different lengths need no padding mask because every row has
its own slot counter. Memory: weights + KV for (prompt + answer) conditional and (answer +
window) unconditional slots per image, ~0.5 MiB per slot for the 7B in bf16, where the answer
budget is what the request needs (:func:`tokens_needed`): the rest of an image the prompt opened,
or `max_text_tokens` of text + one image block of the prompt's grid + the end token, never more
than `max_new_tokens`. The default 512 text answer is 4,677 tokens (13.7k slots, 7.2 GB at batch
1) where a flat 8,192-token budget took 21k slots (11 GB) and no longer fitted a 24 GB card.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pure.engine import DONE, LIVE, NOUT, TOK, get_engine, open_tail
from pure.processors import ImageState, SamplingConfig
from pure.tokenizer import ImageCodeMap, SpecialIds, parse_image_block


@dataclass
class GenerationOutput:
    """What :func:`generate` returns, per sample."""

    tokens: list[list[int]]  # generated ids, final 8710 stripped
    finished: list[bool]  # stopped on 8710 (False: hit max_new_tokens)
    forwards: int  # model forwards (CFG rows share one forward)
    texts: list[str] = field(default_factory=list)  # answer text (needs a tokenizer)
    images: list[torch.Tensor | None] = field(default_factory=list)  # (h_lat, w_lat) code grids
    ids: torch.Tensor | None = None  # (B, steps) id drawn at every step (finished rows: eos_id after the end)
    logits: torch.Tensor | None = None  # (B, steps, V) raw conditional logits per step (return_logits)
    uncond_logits: torch.Tensor | None = None  # (B, steps, V) raw unconditional logits (return_uncond_logits)


def split_answer(tokens: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Split generated ids into text ids and image blocks (8197 ... 8196, inclusive)."""
    text, blocks, cur = [], [], None
    for t in map(int, tokens):
        if t == SpecialIds.EOT:
            break
        if cur is None and t == SpecialIds.IMG_START:
            cur = [t]
        elif cur is not None:
            cur.append(t)
            if t == SpecialIds.IMG_END:
                blocks.append(cur)
                cur = None
        else:
            text.append(t)
    if cur is not None:  # unterminated image: keep it so the caller can report it
        blocks.append(cur)
    return text, blocks


def decode_answer(
    out: GenerationOutput, code_map: ImageCodeMap, tokenizer=None, prompts: Sequence[Sequence[int]] | None = None
) -> GenerationOutput:
    """Fill `texts` and `images` (first parsable image per sample, else None).

    With `prompts`, an image header the prompt left open is prepended before parsing."""
    out.texts, out.images = [], []
    for b, toks in enumerate(out.tokens):
        head = open_tail(prompts[b]) if prompts is not None else []
        text, blocks = split_answer(head + list(toks))
        out.texts.append(tokenizer.decode(text) if tokenizer is not None else "")
        codes = None
        for block in blocks:
            try:
                codes = parse_image_block(block, code_map)
                break
            except ValueError:
                continue
        out.images.append(codes)
    return out


def row_seeds(n: int, seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None) -> list[int]:
    """Per-row seeds of the counter-based sampler (pure/processors.py `counter_uniform`).

    A list gives each row its own; an int s gives rows s, s + 1, ... (so a batch seeded s equals
    single runs seeded s + b); a generator gives one base seed drawn from it; none of them: one
    drawn from torch's global CPU generator."""
    if seed is not None and not isinstance(seed, int):
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
        return seeds
    if seed is None:
        draw = torch.randint(2**62, (1,), generator=generator, device=generator.device if generator else "cpu")
        seed = int(draw)  # once per call, before decoding: not a per-token sync
    return [int(seed) + b for b in range(n)]


# Text budget of a restoration answer (degradation sentence + caption) before its image block;
# PURE's training answers hold ~100 text tokens.
DEFAULT_TEXT_TOKENS = 512


def answer_tokens(side_px: int, text_tokens: int = DEFAULT_TEXT_TOKENS, ds: int = 8) -> int:
    """Tokens of a text + image answer at a square `side_px` output: text, `<8197><h><w>`, the
    rows of codes with their row ends, the image end and the turn end."""
    lat = side_px // ds
    return text_tokens + 3 + lat * (lat + 1) + 1 + 1


def _prompt_grid(prompt: Sequence[int]) -> ImageState | None:
    """The state right after the last complete image block of `prompt` (its h, w), or None."""
    st, last = ImageState(), None
    for t in map(int, prompt):
        if t == SpecialIds.IMG_END and st.in_grid:
            last = copy.copy(st)
        st.update(t)
    return last


def tokens_needed(
    prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int, max_text_tokens: int | None = None
) -> int:
    """The token budget a call really needs (it sizes the loop, the KV cache and the attention span).

    Image-only restoration (stop token = image end, every prompt inside a valid grid): the
    structure mask fixes the remaining length, 4,161 tokens for a 512 image. A text + image answer
    with `max_text_tokens`: that much text, then one image block of the grid of the prompt's own
    (LQ) image -- PURE restores into the input's bucket -- and the end token. Never more than
    `max_new_tokens`; without a text budget, or a prompt without an image, `max_new_tokens`."""
    if int(eos_id) == int(SpecialIds.IMG_END):
        states = [ImageState().advanced(p) for p in prompts]
        if all(s.in_grid for s in states):
            return min(max_new_tokens, max(s.block_tokens - s.count for s in states))
        return max_new_tokens
    if max_text_tokens is None:
        return max_new_tokens
    grids = [_prompt_grid(p) for p in prompts]
    if any(g is None for g in grids):
        return max_new_tokens
    return min(max_new_tokens, max(int(max_text_tokens) + 3 + g.block_tokens + 1 for g in grids))


class DonePoll:
    """Asks "are all rows done?" every `every` steps without stalling the device: on CUDA the
    flag is copied to pinned memory asynchronously and read only once its event has completed
    (a step or two late, which only costs idle steps of finished rows); on CPU it is read."""

    def __init__(self, device: torch.device, every: int):
        self.every, self.cuda = max(1, int(every)), device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.bool, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending = False

    def __call__(self, step: int, done: torch.Tensor) -> bool:
        if not self.cuda:
            return step % self.every == 0 and bool(done.all())
        if self.pending and self.event.query():
            self.pending = False
            if bool(self.host[0]):
                return True
        if step % self.every == 0 and not self.pending:
            self.host.copy_(done.all().view(1), non_blocking=True)
            self.event.record()
            self.pending = True
        return False


class _LogitStore:
    """Per-step logits kept for analysis, copied out without a sync (pinned host buffer on
    CUDA). Memory: B x steps x 73,728 x element size (1.2 GB per 512 image in fp32)."""

    def __init__(self, batch: int, steps: int, vocab: int, device, dtype, source: torch.device):
        pin = source.type == "cuda" and torch.device(device).type == "cpu"
        self.buf = torch.empty(batch, steps, vocab, dtype=dtype, device=device, pin_memory=pin)
        self.n = 0

    def add(self, logits: torch.Tensor) -> None:
        self.buf[:, self.n].copy_(logits, non_blocking=True)
        self.n += 1

    def result(self) -> torch.Tensor:
        return self.buf[:, : self.n]


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig | None = None,
    image_mask: torch.Tensor | None = None,
    max_new_tokens: int = 8192,
    generator: torch.Generator | None = None,
    seed: int | Sequence[int] | None = None,
    eos_id: int = SpecialIds.EOT,
    code_map: ImageCodeMap | None = None,
    tokenizer=None,
    *,
    max_text_tokens: int | None = None,
    compile: bool | None = None,
    return_logits: bool = False,
    return_uncond_logits: bool = False,
    logits_device: str | torch.device = "cpu",
    logits_dtype: torch.dtype = torch.float32,
    poll_every: int = 64,
) -> GenerationOutput:
    """Sample up to `max_new_tokens` per prompt, one token per forward, stopping on `eos_id`.

    Runs on :class:`pure.engine.DecodeEngine`: batched CFG rows in one forward over a static KV
    cache, the step compiled when `compile` (default: on CUDA) — a CUDA graph on CUDA — and no
    device value read per token: finished rows idle on `eos_id` and the loop asks whether all
    rows are done only every `poll_every` steps (asynchronously on CUDA).

    Seeds: see :func:`row_seeds` (a batch equals single runs with the same per-row seeds).
    `max_text_tokens`: text budget of a text + image answer; with it the answer budget (and KV
    cache) is what the request needs (:func:`tokens_needed`) instead of `max_new_tokens`.
    `image_mask`: bool (V,) of image ids (default: the two real id ranges). With `code_map`
    (and `tokenizer` for the text) `images`/`texts` are filled.
    `return_logits`: keep each step's raw conditional logits (pre-CFG, pre-processor) in
    `out.logits` (B, steps, V) on `logits_device` in `logits_dtype`, aligned with `out.ids`;
    `return_uncond_logits` likewise for the unconditional rows (meaningful only while a row is
    inside an image grid)."""
    sampling = sampling or SamplingConfig()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    device = model.lm_head.weight.device
    image_mask = (ImageCodeMap.synthetic().image_mask() if image_mask is None else image_mask).to(device)
    seeds = row_seeds(len(prompts), seed, generator)
    max_new_tokens = tokens_needed(prompts, eos_id, max_new_tokens, max_text_tokens)
    engine = get_engine(model, prompts, sampling, image_mask, max_new_tokens, eos_id, compile=compile)
    S, cond, uncond = engine.start(prompts, seeds)
    vocab = cond.shape[-1]
    stores = [
        _LogitStore(len(prompts), max_new_tokens, vocab, logits_device, logits_dtype, device) if keep else None
        for keep in (return_logits, return_uncond_logits and uncond is not None)
    ]
    poll = DonePoll(device, poll_every)
    ids = [S[:, TOK]]
    step = 1
    while True:
        for store, x in zip(stores, (cond, uncond), strict=True):
            if store is not None:
                store.add(x)
        if step >= max_new_tokens or poll(step, S[:, DONE]):
            break
        S, cond, uncond = engine.call(engine.ar_step, S)
        ids.append(S[:, TOK])
        step += 1
    if return_uncond_logits and stores[1] is None:  # no CFG pass (cfg 1.0): an empty (B, 0, V)
        stores[1] = _LogitStore(len(prompts), 0, vocab, logits_device, logits_dtype, device)
    ids_t = torch.stack(ids, 1)
    table = torch.cat([S[:, [NOUT, LIVE]], ids_t], 1).tolist()  # the one read-out of the run
    n_out, live, rows = [r[0] for r in table], [r[1] for r in table], [r[2:] for r in table]
    tokens, finished = [], []
    for row, n in zip(rows, n_out, strict=True):
        fin = eos_id in row[:n]
        tokens.append(row[: n - 1] if fin else row[:n])
        finished.append(fin)
    # forwards until the last row finished; `ids` has every step run (idle ones until the poll noticed)
    result = GenerationOutput(
        tokens=tokens,
        finished=finished,
        forwards=1 + max(live),
        ids=ids_t,
        logits=stores[0].result() if stores[0] else None,
        uncond_logits=stores[1].result() if stores[1] else None,
    )
    return decode_answer(result, code_map, tokenizer, prompts) if code_map is not None else result
