"""VARSR generation core: the KV-cached next-scale loop with image-based CFG and the refiner.

Spec varsr.md sections 6 and 9.  The negative class (label 1, "low quality") is the CFG branch;
its weight ramps linearly over scales (t = cfg * si / (K - 1)).  Token draws use a dedicated
generator (top-k 1, i.e. greedy, by default).  `varsr.sample` builds images on top of this.

Speed (issue 9): B images run as one batch with the CFG rows stacked ([B cond; B neg] in one
forward), the LR is encoded once for both branches, the KV cache is preallocated (no per-scale
re-concatenation), `dtype` switches bf16/fp16 autocast, `compile=True` runs every block through
`torch.compile` with static shapes (one graph per scale shape, shared by all blocks) and the
refiner's network likewise; the refiner denoises all last-scale tokens of all images in one
call per step.  Reproducibility: `generator` may be one generator or one per image; with one per
image, image b of a batch gets exactly the tokens and refiner noise of a run of b alone.
Official quirks not reproduced (spec 12): no extra unguided last-scale draw, the refiner is
unguided only when t == 0, no hard-coded CUDA or 1024-token reshapes.  `scale_loop` is shared
with class-to-image sampling (varsr.sample_c2i).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .fastvar import make_state
from .parallelize import for_sampling

Generators = torch.Generator | Sequence[torch.Generator] | None
_DTYPES = {
    None: None,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass
class GenerationTrace:
    """What a generation call sampled, for analysis and reproducibility (`return_trace=True`)."""

    ids: list[torch.Tensor] = field(default_factory=list)  # per scale: sampled token ids (B, pn^2)
    # per scale: raw model logits (rows, pn^2, V) fp32 before guidance; with CFG rows = 2B
    # ([B cond; B guidance branch]), else B.
    logits: list[torch.Tensor] = field(default_factory=list)
    cfg: list[float] = field(default_factory=list)  # per scale: guidance weight t (0 without CFG)


def cfg_ramp(cfg: float, si: int, num_scales: int, power: float = 1.0) -> float:
    """Guidance weight at scale si: 0 at the 1x1 map, cfg at the last scale.

    power 1 (linear) is the SR schedule; the C2I model uses power 2 (spec 6).
    """
    if power == 1:  # keep the SR arithmetic unchanged (bit-identical to earlier outputs)
        return cfg * si / (num_scales - 1)
    return cfg * (si / (num_scales - 1)) ** power


def sample_tokens(
    logits: torch.Tensor, top_k: int = 1, top_p: float = 0.0, temperature: float = 1.0, generator: Generators = None
) -> torch.Tensor:
    """VAR's top-k / top-p sampling on (B, l, V) logits -> Long (B, l).

    top_k keeps every logit >= the k-th largest (ties keep all maxima); top_p drops the smallest
    tokens whose cumulative probability stays <= 1 - top_p.  temperature <= 0 means argmax.
    `generator`: one for the whole batch, or a list of B (row b draws from generator b only).
    """
    B, n, V = logits.shape
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < V:
        thresh = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < thresh, float("-inf"))
    if 0 < top_p < 1:
        s_logits, s_idx = logits.sort(dim=-1, descending=False)
        drop = s_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, s_idx, drop), float("-inf"))
    probs = logits.softmax(-1)
    if isinstance(generator, (list, tuple)):
        if len(generator) != B:
            raise ValueError(f"{len(generator)} generators for {B} images")
        return torch.stack(
            [torch.multinomial(probs[b], 1, replacement=True, generator=g).view(n) for b, g in enumerate(generator)]
        )
    return torch.multinomial(probs.view(-1, V), 1, replacement=True, generator=generator).view(B, n)


@torch.no_grad()
def generate_fhat(
    model,
    vqvae,
    lr: torch.Tensor,
    cfg: float = 6.0,
    top_k: int = 1,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: Generators = None,
    fastvar=None,
    label: int = 0,
    refine: bool = True,
    refiner_temperature: float = 1.0,
    on_scale: Callable[[int, torch.Tensor], None] | None = None,
    return_logits: bool = False,
    dtype: str | torch.dtype | None = None,
    compile: bool = False,
    refiner_noise: torch.Tensor | None = None,
    return_trace: bool = False,
):
    """LR (B, 3, S, S) in [-1, 1] at the model size -> accumulated latent f_hat (B, Cvae, G, G).

    Returns f_hat, then (when asked) the guided per-scale logits [(B, pn^2, V)] (return_logits)
    and a `GenerationTrace` of ids and raw unguided logits (return_trace).  `on_scale(si, f_hat)`
    is called after every scale (intermediate export).  `dtype` "bf16"/"fp16" runs under autocast
    (head and refiner schedule stay fp32); `compile` see the module docstring; `refiner_noise`
    (steps + 1, B * G^2, Cvae) replaces the refiner's drawn noise.
    """
    B = lr.shape[0]
    doubled = cfg != 0  # cfg 0: the negative branch would get weight 0 at every scale
    labels = torch.full((B,), label, dtype=torch.long, device=lr.device)
    with for_sampling(model) as core, _autocast(lr.device, dtype):  # FSDP2: parameters gathered
        K = len(core.patch_nums)
        if doubled:  # negative class = num_classes - 1 ("low quality"); shares LR prefix and tokens
            labels = torch.cat([labels, torch.full_like(labels, core.cfg.num_classes - 1)])
        x, cond = core.prefix(lr, labels)  # the LR is encoded once for both branches
        return scale_loop(
            core,
            vqvae,
            x,
            cond,
            B,
            [cfg_ramp(cfg, si, K) for si in range(K)] if doubled else None,
            top_k,
            top_p,
            temperature,
            generator,
            fastvar,
            refine,
            refiner_temperature,
            on_scale,
            return_logits,
            compile=compile,
            refiner_noise=refiner_noise,
            return_trace=return_trace,
        )


def _autocast(device: torch.device, dtype: str | torch.dtype | None):
    dt = _DTYPES[dtype] if not isinstance(dtype, torch.dtype) else dtype
    return torch.autocast(device_type=device.type, dtype=dt, enabled=dt not in (None, torch.float32))


def _cache_dtype(core, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return core.head.weight.dtype


def scale_loop(
    core,
    vqvae,
    x: torch.Tensor,
    cond: torch.Tensor,
    B: int,
    ramp: list[float] | None,
    top_k: int,
    top_p: float,
    temperature: float,
    generator: Generators,
    fastvar,
    refine: bool,
    refiner_temperature: float,
    on_scale,
    return_logits: bool,
    *,
    compile: bool = False,
    refiner_noise: torch.Tensor | None = None,
    return_trace: bool = False,
):
    """KV-cached next-scale loop shared by SR and C2I sampling.

    `x`, `cond`: prefix tokens and AdaLN condition from `core.prefix`, already doubled
    ([cond; guidance branch], 2B rows) when `ramp` (guidance weight t per scale) is given;
    logits = (1 + t) l_cond - t l_branch.  The refiner is guided with the last scale's t.
    """
    from .compiled import block_runner, refiner_trunk

    pns, K = core.patch_nums, len(core.patch_nums)
    quant = vqvae.quantize
    doubled = ramp is not None
    caches = core.new_cache(x.shape[0], _cache_dtype(core, x.device), x.device)
    state = make_state(fastvar, pns)
    run = block_runner(core, compile)
    G = pns[-1]
    f_hat = torch.zeros(B, quant.cvae, G, G, device=x.device, dtype=quant.embedding.weight.dtype)
    all_logits, trace, t, h = [], GenerationTrace(), 0.0, None
    for si in range(K):
        if state is not None:
            state.set_step(si)
        h = run(x, cond, core.rope_rows(si, x.device), caches, state)
        logits = core.logits(h[:, -1:] if si == 0 else h, cond)  # step 0: read the SOS output
        if return_trace:
            trace.logits.append(logits)
        if doubled:
            t = ramp[si]
            logits = (1 + t) * logits[:B] - t * logits[B:]
        if return_logits:
            all_logits.append(logits)
        idx = sample_tokens(logits, top_k, top_p, temperature, generator)
        if return_trace:
            trace.ids.append(idx)
            trace.cfg.append(t)
        f_hat, nxt = quant.accumulate(si, idx, f_hat)
        if on_scale is not None:
            on_scale(si, f_hat)
        if nxt is not None:
            x = core.embed_scale(nxt, si + 1)
            x = torch.cat([x, x]) if doubled else x
    if refine:
        e = quant.embedding(idx)  # the guided last-scale tokens condition both CFG halves
        e = torch.cat([e, e]) if doubled else e
        z = core.refiner_condition(h, e).float().flatten(0, 1)  # one row per token: [cond; neg]
        guided = doubled and t != 0
        if doubled and not guided:  # weight 0: the branch rows would not influence anything
            z = z[: B * G * G]
        res = core.diffloss.sample(
            z,
            cfg_t=t,
            guided=guided,
            temperature=refiner_temperature,
            generator=generator,
            noise=refiner_noise,
            trunk=refiner_trunk(core.diffloss.net, compile),
        )
        res = (res * core.cfg.vae_scale).view(B, G * G, -1).transpose(1, 2).reshape(B, -1, G, G)
        f_hat = f_hat + res.to(f_hat.dtype)
    out = (f_hat,) + ((all_logits,) if return_logits else ()) + ((trace,) if return_trace else ())
    return out if len(out) > 1 else f_hat
