"""Autoregressive PURE decoding with a caller-owned KV cache and batched CFG (spec §7).

Cache layout: rows [0, B) are the conditional streams, rows [B, 2B) (only when cfg != 1) the
unconditional ones.  Both halves are fed the same tokens in one forward (one weight read per
step instead of the official two unbatched passes); what makes a row unconditional is its key
mask and its positions: once sample b opens an image at cache slot s, its unconditional row
attends only to slots >= s and uses positions slot - s, i.e. it sees exactly the AR context
[8197, h, w, codes so far] with positions from 0 (spec §7.2).  Keys before s in that row are
copies of the conditional prompt (the prefill is run on B rows and duplicated) and are never
attended.  Prompts of different lengths are left-padded; padded keys are masked and positions
start at 0 at each row's first real token.

Memory: the unconditional rows keep a copy of the prompt's K/V they never attend (about 2 GB
extra for the 7B at 512 px, ~0.5 MiB per token); that buys one batched forward per step and
an unchanged model. `capacity` (default prompt + max_new_tokens) preallocates the cache;
lower max_new_tokens (~4,400 suffices for one 512 answer) to shrink it.

The same :class:`Decoder` serves SJD (pure/jacobi.py): `forward` takes a window of tokens per
sample and `rollback` truncates the cache; the uncond bases are recomputed from the token
history on every forward, so a rolled-back image start leaves no stale mask behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from pure.processors import ImageState, SamplingConfig, cfg_rows, probs_from_scores, process_scores, sample
from pure.tokenizer import ImageCodeMap, SpecialIds, parse_image_block


class Decoder:
    """KV-cache bookkeeping for B samples (plus their unconditional rows)."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], use_cfg: bool, capacity: int = 0):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: every prompt needs at least one token")
        self.model, self.use_cfg = model, use_cfg
        self.device = model.lm_head.weight.device
        self.B = len(prompts)
        self.L = max(len(p) for p in prompts)
        self.pad = torch.tensor([self.L - len(p) for p in prompts], device=self.device)
        # Tokens whose K/V are in the cache (row b: prompt then fed tokens), without padding.
        self.fed: list[list[int]] = [list(map(int, p)) for p in prompts]
        self.cache = model.new_cache(self.B, capacity=capacity)
        self.forwards = 0
        # Official-SJD compat (spec §8.3 bug 2): the uncond row starts at this prompt index
        # (len(prompt) - 1, keeping the prompt's last 8710) instead of at the image start.
        self.uncond_fixed_base: int | None = None
        self._start_memo: dict[int, tuple[int, int | None]] = {}

    # ------------------------------------------------------------------------------ geometry
    def _last_start(self, tokens: Sequence[int], offset: int) -> int | None:
        """Cache slot of the last image start in `tokens` placed at `offset`, if any."""
        for i in range(len(tokens) - 1, -1, -1):
            if tokens[i] == SpecialIds.IMG_START:
                return offset + i
        return None

    def _bases(self, window: list[list[int]]) -> torch.Tensor:
        """Per sample, the slot the unconditional row starts at (its last image start)."""
        if self.uncond_fixed_base is not None:
            return self.pad + self.uncond_fixed_base
        out = []
        for b in range(self.B):
            start = self._last_start(window[b], self.cache.length)
            if start is None:
                start = self._fed_start(b)
            out.append(int(self.pad[b]) if start is None else start)
        return torch.tensor(out, device=self.device)

    def _fed_start(self, b: int) -> int | None:
        """Slot of the last image start among fed tokens, memoised per fed length (the scan
        would otherwise walk ~4k tokens back on every decoding step)."""
        key = len(self.fed[b])
        if self._start_memo.get(b, (None,))[0] != key:
            prev = self._start_memo.get(b)
            if prev is not None and prev[0] < key:  # only new tokens need a look
                found = self._last_start(self.fed[b][prev[0]:], int(self.pad[b]) + prev[0])
                start = found if found is not None else prev[1]
            else:
                start = self._last_start(self.fed[b], int(self.pad[b]))
            self._start_memo[b] = (key, start)
        return self._start_memo[b][1]

    # ------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def prefill(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the prompts; return last-position logits (cond (B, V), uncond (B, V) or None).

        The conditional prefill covers everything before the earliest image left open by a
        prompt; with CFG the cache is then duplicated and the open tail (e.g. `<8197><h><w>`
        written into the prompt) is run on all 2B rows so the unconditional rows see it with
        their own positions and mask."""
        split = self.L
        for b in range(self.B):
            st = ImageState().advanced(self.fed[b])
            start = self._last_start(self.fed[b], int(self.pad[b])) if st.open else None
            if self.use_cfg and start is not None:
                split = min(split, start)
        if self.use_cfg and self.uncond_fixed_base is not None:
            split = min(split, int(self.pad.min()) + self.uncond_fixed_base)
        ids = torch.tensor([[SpecialIds.BOS] * int(self.pad[b]) + self.fed[b] for b in range(self.B)],
                           device=self.device)
        tail = ids[:, split:].tolist()
        self.fed = [ids[b, int(self.pad[b]):split].tolist() for b in range(self.B)]
        cond = uncond = None
        if split > 0:
            slots = torch.arange(split, device=self.device)
            pos = (slots[None] - self.pad[:, None]).clamp_min(0)
            mask = slots[None] >= self.pad[:, None] if bool(self.pad.any()) else None
            cond = self.model(ids[:, :split], pos, self.cache, mask, logits_slice=slice(-1, None))[:, -1]
            self.forwards += 1
        if self.use_cfg:
            self.cache.select(list(range(self.B)) * 2)
        if tail[0]:
            cond, uncond = self.forward(tail, last_only=True)
            cond, uncond = cond[:, -1], None if uncond is None else uncond[:, -1]
        return cond, uncond

    @torch.no_grad()
    def forward(self, window: list[list[int]], last_only: bool = False):
        """Feed `window[b]` (same length T for all b) and return fp32 logits (B, T, V) for the
        conditional rows and, with CFG, the unconditional rows (else None)."""
        T = len(window[0])
        past = self.cache.length
        slots = torch.arange(past + T, device=self.device)
        new = slots[past:]
        ids = torch.tensor(window, device=self.device)
        pos = (new[None] - self.pad[:, None]).clamp_min(0)
        mask = slots[None] >= self.pad[:, None]
        if not self.use_cfg and not bool(self.pad.any()):
            mask = None  # plain causal decoding: let the model take its mask-free fast path
        if self.use_cfg:
            base = self._bases(window)
            upos = torch.where(new[None] >= base[:, None], new[None] - base[:, None], pos)
            ids, pos = torch.cat([ids, ids]), torch.cat([pos, upos])
            mask = torch.cat([mask, slots[None] >= base[:, None]])
        logits = self.model(ids, pos, self.cache, mask, logits_slice=slice(-1, None) if last_only else None)
        self.forwards += 1
        for b in range(self.B):  # padding slots (a tail reaching into a shorter prompt) are not tokens
            self.fed[b].extend(int(t) for t in window[b][max(0, int(self.pad[b]) - past):])
        if self.use_cfg:
            return logits[: self.B], logits[self.B:]
        return logits, None

    def rollback(self, keep: int) -> None:
        """Keep the first `keep` fed tokens of sample 0 (every row drops as many, since all
        rows share one cache length; SJD uses B = 1)."""
        drop = len(self.fed[0]) - keep
        if drop < 0:
            raise ValueError(f"rollback to {keep} tokens but only {len(self.fed[0])} were fed")
        self.cache.truncate(self.cache.length - drop)
        self.fed = [f[: len(f) - drop] for f in self.fed]
        self._start_memo.clear()  # a dropped token may have been the image start


@dataclass
class GenerationOutput:
    """What :func:`generate` returns, per sample."""

    tokens: list[list[int]]            # generated ids, final 8710 stripped
    finished: list[bool]               # stopped on 8710 (False: hit max_new_tokens)
    forwards: int                      # model forwards (CFG rows share one forward)
    texts: list[str] = field(default_factory=list)          # answer text (needs a tokenizer)
    images: list[torch.Tensor | None] = field(default_factory=list)  # (h_lat, w_lat) code grids
    trace: list[dict] = field(default_factory=list)         # per-step raw logits when asked for


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


def open_tail(prompt: Sequence[int]) -> list[int]:
    """The part of `prompt` from an image start it leaves open (e.g. `<8197><h><w>`), else []."""
    prompt = [int(t) for t in prompt]
    if not ImageState().advanced(prompt).open:
        return []
    return prompt[max(i for i, t in enumerate(prompt) if t == SpecialIds.IMG_START):]


def decode_answer(out: GenerationOutput, code_map: ImageCodeMap, tokenizer=None,
                  prompts: Sequence[Sequence[int]] | None = None) -> GenerationOutput:
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


def _generator(seed: int | None, generator: torch.Generator | None, device) -> torch.Generator | None:
    if generator is not None or seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(int(seed))


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], sampling: SamplingConfig | None = None,
             image_mask: torch.Tensor | None = None, max_new_tokens: int = 8192,
             generator: torch.Generator | None = None, seed: int | None = None,
             eos_id: int = SpecialIds.EOT, trace: bool = False, capacity: int | None = None,
             code_map: ImageCodeMap | None = None, tokenizer=None) -> GenerationOutput:
    """Sample up to `max_new_tokens` per prompt, one token per forward, stopping on 8710.

    With `code_map` (and `tokenizer` for the text) the output's `images`/`texts` are filled.
    `image_mask`: bool (V,) of image ids (default: the two real id ranges). Rows that have
    finished keep being fed 8710 (their outputs are ignored) so every row keeps one length.
    `trace=True` records each step's raw cond/uncond logits (tests compare them against full
    forwards)."""
    sampling = sampling or SamplingConfig()
    device = model.lm_head.weight.device
    if image_mask is None:
        image_mask = ImageCodeMap.synthetic().image_mask()
    image_mask = image_mask.to(device)
    gen = _generator(seed, generator, device)
    cap = capacity if capacity is not None else max(len(p) for p in prompts) + max_new_tokens
    dec = Decoder(model, prompts, sampling.uses_cfg, capacity=cap)
    states = [ImageState().advanced(p) for p in prompts]
    cond, uncond = dec.prefill()
    out = [[] for _ in prompts]
    done = [False] * len(prompts)
    steps = []
    for step in range(max_new_tokens):
        rows = cfg_rows(states)
        u = uncond[rows] if (uncond is not None and rows) else None
        if trace:
            steps.append({"cond": cond.clone(), "uncond": u.clone() if u is not None else None, "rows": rows})
        probs = probs_from_scores(process_scores(cond, states, sampling, image_mask, u, rows), sampling)
        nxt = sample(probs, gen).tolist()
        for b, t in enumerate(nxt):
            if done[b]:
                continue
            if t == eos_id:
                done[b] = True
            else:
                out[b].append(t)
                states[b].update(t)
        if all(done) or step == max_new_tokens - 1:
            break
        feed = [[eos_id if done[b] else nxt[b]] for b in range(dec.B)]
        cond, uncond = dec.forward(feed)
        cond, uncond = cond[:, -1], None if uncond is None else uncond[:, -1]
    result = GenerationOutput(tokens=out, finished=done, forwards=dec.forwards, trace=steps)
    return decode_answer(result, code_map, tokenizer, prompts) if code_map is not None else result
