"""Fixed-shape PURE decoding: static KV cache, device-side state, compiled steps (spec §7, §9).

Everything a decoding step needs lives in tensors of fixed shape, so the step can be compiled
with `torch.compile` and, on CUDA, captured as a CUDA graph (mode "reduce-overhead"), and the
host never waits for a token:

- the KV cache is a :class:`StaticKVCache` with two row groups: B conditional rows (prompt +
  answer) and, with CFG, B unconditional rows that hold only the current image context
  [8197, h, w, codes so far] with positions from 0 (spec §7.2) — one forward feeds all 2B rows
  (one weight read), and the unconditional rows carry no copy of the 4k-token prompt;
- per row, an int64 state vector (the image state of pure/processors.py plus the columns
  below) says which cache slot the next token goes to, whether the row is done, and so on;
  rows advance by tensor arithmetic, never by reading a value back;
- structure mask, CFG, entropy top-k and sampling are the tensor twins in pure/processors.py;
  random numbers come from a counter-based hash of (per-row seed, step, stream), so a batch of
  B images equals B single runs with the same per-image seeds, and no generator state lives on
  the device.

The prompt prefill runs eagerly with SDPA (flash on CUDA: plain causal, no mask) and keeps
logits for the last real token of each row only. pure/generate.py (AR) and pure/jacobi.py (SJD)
drive an engine; engines (their caches and compiled steps) are reused across calls with the
same shapes, see :func:`get_engine` / :func:`release_engines`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from common.compile import CompiledOrEager, raise_recompile_limit
from pure.model.kv_cache import StaticKVCache
from pure.processors import (
    STATE_COLS,
    ImageState,
    SamplingConfig,
    advance_t,
    counter_uniform,
    process_scores_t,
    select_t,
    state_tensor,
)
from pure.tokenizer import SpecialIds

# Engine columns of the row state, after the STATE_COLS image-state columns.
# TOK: last drawn token (fed next); SLOT / USLOT: cache slot of that token in the cond / uncond
# row; DONE: stopped; NOUT: tokens drawn (end token included); STEP: steps run (the sampler's
# counter); SEED: the row's sampler seed; LIVE: forwards the row was not yet done for.
TOK, SLOT, USLOT, DONE, NOUT, STEP, SEED, LIVE = range(STATE_COLS, STATE_COLS + 8)
NCOLS = STATE_COLS + 8
# torch.compile backend of the steps. Tests switch to "aot_eager" where only the tracing is under
# test (whole-graph capture, functionalised cache writes): inductor's C++ build of the larger
# SJD graph takes minutes on a loaded 2-core CI box.
COMPILE_BACKEND = "inductor"
# Decode attention over the static cache: "sdpa" (masked, reads every slot) or "flex"
# (FlexAttention block mask, skips the unfilled blocks; fused only when compiled, eager it
# materialises the scores); bench/gpu_pure.py measures both.
ATTENTION = "sdpa"
_ROUND = 256  # prompt capacities are rounded up so similar prompts (e.g. every 512 bucket) share one engine


@dataclass(frozen=True)
class EngineSpec:
    """Everything that fixes the shapes and constants of the compiled steps."""

    batch: int  # B images (the cache has 2B rows with CFG)
    prompt_cap: int  # longest prompt the conditional rows take
    tail_cap: int  # longest unconditional prefill (an image header left open by the prompt)
    max_new_tokens: int  # answer budget per row
    window: int  # tokens per forward (1 = AR; SJD window)
    sampling: SamplingConfig = field(compare=False)  # processor chain constants (keyed by value in get_engine)
    eos_id: int = SpecialIds.EOT  # stop token
    uncond_reset: bool = True  # uncond context restarts at every image start (False: official SJD compat)
    compile: bool = False  # torch.compile the steps (CUDA graphs on CUDA)
    attention: str = "sdpa"  # decode attention: sdpa | flex (see ATTENTION)

    @property
    def uses_cfg(self) -> bool:
        return self.sampling.uses_cfg


_DEFAULT_COMPILE: bool | None = None


def set_default_compile(flag: bool | None) -> None:
    """Process-wide default for `compile=None` callers (the sample config's `compile` key sets
    it once, so the restorer and demo need no extra argument); None = by device."""
    global _DEFAULT_COMPILE
    _DEFAULT_COMPILE = flag


def default_compile(device: torch.device | str) -> bool:
    """Compile by default on CUDA only: on CPU the compile time outweighs the gain."""
    if _DEFAULT_COMPILE is not None:
        return _DEFAULT_COMPILE
    return torch.device(device).type == "cuda"


class DecodeEngine:
    """Static cache + compiled one-step functions for one :class:`EngineSpec` and model."""

    def __init__(self, model, spec: EngineSpec, image_mask: torch.Tensor):
        self.model, self.spec = model, spec
        self.device = model.lm_head.weight.device
        self.image_mask = image_mask.to(self.device)
        # Slots a window may touch beyond the committed tokens: the window itself.
        extra = spec.max_new_tokens + spec.window + 1
        groups = [(spec.batch, spec.prompt_cap + extra)]
        if spec.uses_cfg:
            groups.append((spec.batch, spec.tail_cap + extra))
        self.cache = StaticKVCache.for_model(model, groups, scratch=max(16, spec.window), attention=spec.attention)
        self.cuda_graphs = spec.compile and self.device.type == "cuda"
        if spec.compile:
            self.cache.mark_static()
        self._compiled: dict[str, object] = {}
        self.ar_step = self.compiled("ar_step", self._ar_step)

    # ------------------------------------------------------------------------- compilation
    def compiled(self, name: str, fn):
        """`fn` compiled once per engine when the spec says so (CUDA: CUDA graphs)."""
        if not self.spec.compile:
            return fn
        if name not in self._compiled:
            # Every engine (shape) recompiles the same code objects; dynamo's default of 8
            # versions would silently fall back to eager in a long run over many shapes.
            raise_recompile_limit(64)
            mode = "reduce-overhead" if self.device.type == "cuda" and COMPILE_BACKEND == "inductor" else None
            self._compiled[name] = CompiledOrEager(
                fn, f"PURE {name}", fullgraph=True, dynamic=False, mode=mode, backend=COMPILE_BACKEND
            )
        return self._compiled[name]

    def call(self, fn, *args):
        """Run a (compiled) step; with CUDA graphs, outputs are copied out of the graph's pool
        because the next replay overwrites them."""
        if not self.cuda_graphs:
            return fn(*args)
        torch.compiler.cudagraph_mark_step_begin()
        out = fn(*args)
        return tuple(None if t is None else t.clone() for t in out)

    # ---------------------------------------------------------------------------- forward
    def window_forward(self, window: torch.Tensor, S: torch.Tensor):
        """Feed window (B, T) at each row's next slots.

        Returns cond logits (B, T, V), uncond logits (B, T, V) or None, the image state at
        every window position (B, T, 6; position 0 = S's, which includes window[:, 0]) and
        `opens` (B,): the first window position that opens an image (T if none). From there
        the row's uncond context restarts at slot 0; earlier positions continue the old one.
        (Two images in one window would make the two contexts overlap; a window is 16 tokens
        and an image at least 24, and the last tokens of an image are forced row/image ends.)"""
        B, T = window.shape
        ar = torch.arange(T, device=window.device)
        states = [S[:, :STATE_COLS]]
        opened = [states[0][:, 0].bool() & (states[0][:, 1] == 0) & (window[:, 0] == SpecialIds.IMG_START)]
        for t in range(1, T):
            states.append(advance_t(states[-1], window[:, t]))
            opened.append(~states[-2][:, 0].bool() & states[-1][:, 0].bool())
        states = torch.stack(states, 1)
        opens = torch.where(torch.stack(opened, 1), ar, T).amin(-1)
        slots = S[:, SLOT, None] + ar
        if not self.spec.uses_cfg:
            return self.model.forward_static(window, slots, self.cache), None, states, opens
        if not self.spec.uncond_reset:
            opens = torch.full_like(opens, T)
        uslots = torch.where(ar >= opens[:, None], ar - opens[:, None], S[:, USLOT, None] + ar)
        logits = self.model.forward_static(torch.cat([window, window]), torch.cat([slots, uslots]), self.cache)
        return logits[:B], logits[B:], states, opens

    @staticmethod
    def next_uslot(S: torch.Tensor, opens: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Uncond slot after committing window positions 0..n."""
        return torch.where(opens <= n, n + 1 - opens, S[:, USLOT] + n + 1)

    def choose(self, cond, uncond, st, seed, counter, stream=0) -> torch.Tensor:
        """Processor chain + draw for (N, V) logits and (N, >= 6) image states."""
        scores = process_scores_t(cond, uncond, st[:, :STATE_COLS], self.spec.sampling, self.image_mask)
        return select_t(scores, self.spec.sampling, counter_uniform(seed, counter, stream))

    # ------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def start(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int]):
        """Prefill the prompts and draw each row's first token.

        Returns (S (B, NCOLS) row state, cond logits (B, V), uncond logits (B, V) or None) —
        the logits the first token was drawn from."""
        spec, dev = self.spec, self.device
        if len(prompts) != spec.batch or max(map(len, prompts)) > spec.prompt_cap:
            raise ValueError("prompts do not fit this engine")
        lens = [len(p) for p in prompts]
        ids = _right_pad(prompts, dev)
        last = torch.tensor(lens, device=dev) - 1
        slots = torch.arange(ids.shape[1], device=dev).expand(spec.batch, -1)
        cond = self.model.forward_static(ids, slots, self.cache, prefill_group=0, last_index=last)[:, 0]
        uncond, tails = None, [[] for _ in prompts]
        if spec.uses_cfg:
            tails = [uncond_tail(p, spec.uncond_reset) for p in prompts]
            if any(tails):
                tids = _right_pad([t or [0] for t in tails], dev)
                tlast = torch.tensor([max(len(t), 1) - 1 for t in tails], device=dev)
                tslots = torch.arange(tids.shape[1], device=dev).expand(spec.batch, -1)
                uncond = self.model.forward_static(tids, tslots, self.cache, prefill_group=1, last_index=tlast)[:, 0]
        st = state_tensor([ImageState().advanced(p) for p in prompts], dev)
        seed = torch.tensor([int(s) for s in seeds], device=dev)
        zero = torch.zeros_like(seed)
        nxt = self.choose(cond, uncond, st, seed, zero)
        S = torch.cat(
            [
                advance_t(st, nxt),
                torch.stack(
                    [
                        nxt,
                        torch.tensor(lens, device=dev),
                        torch.tensor([len(t) for t in tails], device=dev),
                        (nxt == spec.eos_id).long(),
                        zero + 1,
                        zero + 1,
                        seed,
                        zero,
                    ],
                    1,
                ),
            ],
            1,
        )
        return S, cond, uncond

    def _ar_step(self, S: torch.Tensor):
        """Feed each row's last token, draw the next: (S', cond logits, uncond logits)."""
        done = S[:, DONE].bool()
        cond, uncond, _, opens = self.window_forward(S[:, TOK, None], S)
        cond, uncond = cond[:, 0], None if uncond is None else uncond[:, 0]
        nxt = self.choose(cond, uncond, S, S[:, SEED], S[:, STEP])
        nxt = torch.where(done, self.spec.eos_id, nxt)  # finished rows idle on the stop token
        uslot = self.next_uslot(S, opens, torch.zeros_like(opens))
        S = torch.cat(
            [
                advance_t(S[:, :STATE_COLS], nxt),
                torch.stack(
                    [
                        nxt,
                        S[:, SLOT] + 1,
                        uslot,
                        (done | (nxt == self.spec.eos_id)).long(),
                        S[:, NOUT] + (~done).long(),
                        S[:, STEP] + 1,
                        S[:, SEED],
                        S[:, LIVE] + (~done).long(),
                    ],
                    1,
                ),
            ],
            1,
        )
        return S, cond, uncond


def uncond_tail(prompt: Sequence[int], reset: bool = True) -> list[int]:
    """What an unconditional row is prefilled with: the image the prompt leaves open
    ([8197, h, w, ...]) in AR semantics, or the prompt's last token (official SJD compat: the
    unconditional branch sees everything after the prompt's final 8710, that 8710 included)."""
    return open_tail(prompt) if reset else [int(t) for t in prompt[-1:]]


def open_tail(prompt: Sequence[int]) -> list[int]:
    """The part of `prompt` from an image start it leaves open (e.g. `<8197><h><w>`), else []."""
    prompt = [int(t) for t in prompt]
    if not ImageState().advanced(prompt).open:
        return []
    return prompt[max(i for i, t in enumerate(prompt) if t == SpecialIds.IMG_START) :]


def _right_pad(rows: Sequence[Sequence[int]], device) -> torch.Tensor:
    """Right-pad with 0: padded keys sit past each row's slot counter, so no query sees them
    before they are overwritten by the row's own next tokens."""
    n = max(len(r) for r in rows)
    return torch.tensor([list(map(int, r)) + [0] * (n - len(r)) for r in rows], device=device)


_ENGINES: dict = {}


def get_engine(
    model,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    image_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    window: int = 1,
    uncond_reset: bool = True,
    compile: bool | None = None,
) -> DecodeEngine:
    """The engine for these shapes, reused when the last call had the same ones (compiled
    graphs and the KV cache survive; only one engine is kept, so memory does not pile up)."""
    device = model.lm_head.weight.device
    compile = default_compile(device) if compile is None else bool(compile)
    cap = -(-max(map(len, prompts)) // _ROUND) * _ROUND
    tail = max(len(uncond_tail(p, uncond_reset)) for p in prompts) if sampling.uses_cfg else 0
    spec = EngineSpec(
        len(prompts),
        cap,
        -(-tail // 8) * 8,
        max_new_tokens,
        window,
        sampling,
        int(eos_id),
        uncond_reset,
        compile,
        ATTENTION,
    )
    key = (id(model), spec, dataclasses.astuple(sampling), hash(image_mask.cpu().numpy().tobytes()))
    if key not in _ENGINES:
        release_engines()
        _ENGINES[key] = DecodeEngine(model, spec, image_mask)
    return _ENGINES[key]


def release_engines() -> None:
    """Drop the cached engine (its KV cache: ~0.5 MiB per slot for the 7B)."""
    _ENGINES.clear()
