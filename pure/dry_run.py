"""PURE dry runs (``dry_run=`` / preflight of launch/train_pure.py and launch/sample_pure.py).

The real code at full size on fake tensors (``common/dry_run.py``). Training builds the configured
model (``pure.build.model_config``: final vocabulary, training dropout), wraps it with
``pure.parallelize.build_engine`` (FSDP2 with its mixed precision, activation checkpointing and
CPU offload; ``backend=none``) and runs the last micro-batch of one optimizer step (forward,
backward, clip, AdamW) on a padded batch of ``data.batch_size x data.max_seq_len``. Sampling
builds the model and VQ in the sampling dtypes and runs the decode engine's prefill and one decode
step over the static KV cache the request sizes (``pure.engine``). DeepSpeed's model states come
from DeepSpeed's own estimators, the activations from the same fake-tensor step without sharding.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch

from common.batch_plan import apply_batch_plan
from common.devices import Device
from common.dry_run import measure, nbytes, prime_optimizer, simulation, with_group
from common.dry_run_report import GIB, DryRunApp, Report
from common.parallel import ac_mode, get_dtype

TRAIN_KEYS = "nproc, data.batch_size, data.max_seq_len, parallel.activation_checkpointing, parallel.cpu_offload"
SAMPLE_KEYS = "batch_size, max_new_tokens, max_text_tokens, dtype"


def _with_layers(cfg, layers):
    if layers is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.model = {**dict(cfg.model or {}), "num_hidden_layers": int(layers)}
    return cfg


def depth(cfg) -> int:
    from pure.build import model_config

    if hasattr(cfg, "init"):
        return model_config(cfg).num_hidden_layers
    return _sample_model_config(cfg).num_hidden_layers


def supervised_fraction(cfg) -> float:
    """Share of a padded training row that goes through lm_head: the answer (text + one image block
    at ``pretokenize.target_size``) of a record, over ``data.max_seq_len``."""
    from pure.generate import answer_tokens

    return min(1.0, answer_tokens(cfg.pretokenize.target_size) / cfg.data.max_seq_len)


def _train_cfg(cfg):
    """The config a dry run builds from: no weights to load (shapes only), vocabulary at its final size,
    the AdamW kernel the GPU run gets (fake tensors live on the CPU, where the default would differ)."""
    cfg = copy.deepcopy(cfg)
    cfg.init.from_hf = None
    cfg.init.extend_vocab_from = None
    if cfg.optim.fused is None:  # what common.parallel.fused_adamw picks for parameters on CUDA
        cfg.optim.fused = not (cfg.parallel.cpu_offload and cfg.parallel.backend == "fsdp2")
    return cfg


def simulate_train(cfg, device: Device, world: int, layers: int | None = None, fake: bool = True) -> list[Report]:
    """One optimizer step's last micro-batch on ``world`` ranks (``fake=False``: real CPU tensors, tests)."""
    from pure.build import model_config
    from pure.losses import PureLoss
    from pure.model.chameleon import ChameleonForCausalLM
    from pure.optim import flops_per_token
    from pure.parallelize import build_engine
    from pure.sequence import IGNORE

    cfg, _ = apply_batch_plan(_train_cfg(_with_layers(cfg, layers)), world)  # as pure.train: global batch split
    par = cfg.parallel
    mcfg = model_config(cfg)
    B = cfg.data.batch_size
    mult = max(1, cfg.data.pad_to_multiple)
    T = -(-cfg.data.max_seq_len // mult) * mult
    accum = max(1, cfg.optim.grad_accum)
    ds = par.backend == "deepspeed"
    offload = bool(par.cpu_offload) and not ds
    group = with_group(world, offload) and not ds
    frac = supervised_fraction(cfg)
    with simulation(world if group else 1, fake, group) as dist:
        # pure.build.build_lm without weights to load (fake tensors are born on CPU); DeepSpeed runs the
        # module in its bf16/fp16 copy (the fp32 master weights are part of its estimated model states)
        dtype = get_dtype(par.param_dtype) if ds else torch.float32
        lm = _built_in(dtype, ChameleonForCausalLM, mcfg)
        root = PureLoss(lm, cfg.loss.z_loss_weight)
        n_params = sum(p.numel() for p in root.parameters())
        shard_cfg = dataclasses.replace(par, backend="none") if ds else par
        eng = build_engine(root, lm, cfg.optim, shard_cfg, dist, B)
        eng._micro = accum - 1  # the measured micro-batch is the one that steps
        if not ds:
            prime_optimizer(eng.optimizer, eng.module.parameters(), keep_grads=accum > 1)
        ids = torch.zeros(B, T, dtype=torch.long)
        labels = torch.zeros(B, T, dtype=torch.long)
        labels[:, : T - round(frac * T)] = IGNORE  # the prompt: only the answer goes through lm_head
        amp = bool(par.autocast) and not ds  # the trainer autocasts on CUDA unless DeepSpeed runs bf16 itself

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                return eng.forward(ids, labels)[0]

        after = None if ds else eng.step  # clip + AdamW (common.dry_run.measure: in place, outside the tracker)
        opt = None if ds else eng.optimizer
        m = measure(forward, eng.module, opt, device, frac, offload, fake, after, backward=eng.backward)
    wrap = f"DeepSpeed ZeRO-{par.zero_stage}" if ds else {"fsdp2": "FSDP2", "none": "one process"}[par.backend]
    if group or ds:
        wrap += f" x{world}"
    title = (
        f"PURE {mcfg.num_hidden_layers}-layer training, {wrap}{' + CPU offload' if par.cpu_offload else ''}, "
        f"AC {ac_mode(par.activation_checkpointing)}, micro-batch {B} x {T}, grad_accum {accum}"
    )
    r = Report(title, device, world, m, B * T * accum, "token", flops_per_token(mcfg, T) * B * T, accum, TRAIN_KEYS)
    r.notes.append(f"lm_head on {frac:.0%} of each row (the answer of a {cfg.pretokenize.target_size} px record)")
    if ds:
        _deepspeed_states(r, cfg, n_params, world, lm)
    elif group and world > 1:
        r.host["rank 0 at start-up: full fp32 model built on CPU, broadcast into the shards"] = n_params * 4
    else:
        r.host["model built on CPU before moving to the GPU (fp32)"] = n_params * 4
    if cfg.data.num_workers:
        r.notes.append(f"plus {cfg.data.num_workers} data worker processes per rank (pre-tokenised shards)")
    r.notes.append("eager step (parallel.compile changes kernels, not these categories)")
    return [r]


def _deepspeed_states(r: Report, cfg, n_params: int, world: int, lm) -> None:
    """Replace the unsharded model states of the fake step by DeepSpeed's own estimate (per GPU / host)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    par = cfg.parallel
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in lm.model.layers)
    largest = max(largest, lm.lm_head.weight.numel(), lm.model.embed_tokens.weight.numel())
    off = bool(par.cpu_offload)
    if int(par.zero_stage) >= 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(n_params, largest, world, 1, off, off, True, 1.5)
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(n_params, world, 1, off, 1.5)
    d = r.m.device_bytes
    for c in ("parameters", "gradients", "optimizer state"):
        d[c] = 0
    d["parameters"] = int(gpu)  # DeepSpeed gives params + grads + optimizer state as one figure
    src = f"DeepSpeed estimate_zero{3 if par.zero_stage >= 3 else 2}_model_states_mem_needs (all model states)"
    r.sources.update(parameters=src, gradients=src, **{"optimizer state": src})
    r.host["DeepSpeed model states in host RAM (its estimator, per node of the world)"] = int(cpu)
    if int(par.zero_stage) >= 3:  # built under deepspeed.zero.Init (pure.parallelize.zero3_build): each
        # rank draws one module whole (fp32) at a time, then keeps its 1/world share on the GPU
        r.host["start-up under deepspeed.zero.Init: one module whole per rank at a time (fp32)"] = largest * 4 * world
    else:
        r.host["start-up: full fp32 model built on CPU by every rank"] = n_params * 4 * world
    r.notes.append("activations and temporaries: the same fake step without sharding; collectives not simulated")
    r.m.traffic.collectives.clear()


# ---------------------------------------------------------------------------------------- sampling
def _sample_model_config(cfg):
    from pure.model import chameleon_config, config_from_dict

    m = dict(cfg.model or {})
    size = m.pop("size", None)
    return chameleon_config(size, **m) if size else config_from_dict(m)


def simulate_sample(cfg, device: Device, world: int = 1, layers: int | None = None, batch: int | None = None):
    """One restoration call of ``batch`` (default ``batch_size``) native-size images: prefill + one
    decode step over the static KV cache the request sizes, then the VQ decode of one output."""
    from pure.engine import get_engine, release_engines
    from pure.evaluate import sampling_config
    from pure.generate import tokens_needed
    from pure.model import ChameleonForCausalLM
    from pure.model.vq import VQModel, vq_config
    from pure.tokenizer import SpecialIds

    cfg = _with_layers(cfg, layers)
    mcfg = _sample_model_config(cfg)
    B = int(batch or cfg.batch_size)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.dtype]
    vq_dtype = torch.bfloat16 if cfg.vq_dtype == "bf16" else torch.float32
    lat = cfg.resolution // 8
    image_mask = torch.zeros(mcfg.vocab_size, dtype=torch.bool)  # real: the engine cache hashes its bytes
    with simulation(1):
        model = _built_in(dtype, ChameleonForCausalLM, mcfg).eval()  # as load_hf_shards(dtype=...) leaves it
        vq = _built_in(vq_dtype, VQModel, vq_config(cfg.vq_size)).eval()
        prompt = _prompt(cfg, lat)
        eos = SpecialIds.IMG_END if cfg.image_only else SpecialIds.EOT
        need = tokens_needed([prompt] * B, eos, cfg.max_new_tokens, cfg.max_text_tokens)

        @torch.no_grad()
        def step():
            with warnings.catch_warnings():  # the engine cache hashes the mask's bytes: meaningless on a fake
                warnings.simplefilter("ignore", UserWarning)
                eng = get_engine(model, [prompt] * B, sampling_config(cfg), image_mask, need, eos, compile=False)
            S, _, _ = eng.start([prompt] * B, list(range(B)))
            eng.call(eng.ar_step, S)
            codes = torch.zeros(1, lat, lat, dtype=torch.long)
            vq.decode_codes(codes)
            step.kv = eng.cache.nbytes()
            step.slots = sum(k.shape[2] for k in eng.cache.keys[0]) if hasattr(eng.cache, "keys") else 0
            release_engines()

        m = measure(step, torch.nn.ModuleList([model, vq]), None, device, 1.0)
    kv = step.kv
    m.device_bytes["KV cache"] = kv
    m.device_bytes["activations"] = max(0, m.device_bytes["activations"] - kv)
    m.device_bytes["temporaries"] = max(0, m.device_bytes["temporaries"] - max(0, kv - m.device_bytes["activations"]))
    m.device_bytes["parameters"] = nbytes(model.parameters()) + nbytes(vq.parameters())
    title = (
        f"PURE {mcfg.num_hidden_layers}-layer sampling, batch {B}, {cfg.resolution} px, {cfg.dtype}, "
        f"{'image only' if cfg.image_only else 'text + image'}, {need} new tokens"
    )
    n = sum(p.numel() for p in model.parameters())
    r = Report(title, device, world, m, B * need, "token", 2.0 * n * B * need, 1, SAMPLE_KEYS)
    r.units = B  # one decode step (the roofline time below) produces one token per image
    r.unit = "token"
    r.sources["KV cache"] = f"the engine's static cache ({kv / GIB:.2f} GiB)"
    r.notes.append(f"roofline time is one decode step; a full answer is {need} steps")
    return [r]


def _built_in(dtype: torch.dtype, cls, *args):
    """``cls(*args)`` with floating parameters created in ``dtype`` (``.to()`` cannot swap fake parameters)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(*args)
    finally:
        torch.set_default_dtype(old)


def _prompt(cfg, lat: int) -> list[int]:
    """A prompt of the real length: PURE's inference text around one LQ image block of `lat` x `lat` codes."""
    from pure.tokenizer import SpecialIds
    from pure.tokenizer.image import LATENT_PER_GRID

    header = [SpecialIds.IMG_START] + [SpecialIds.SIZE_BASE + lat // LATENT_PER_GRID] * 2
    rows = ([10] * lat + [SpecialIds.ROW_END]) * lat
    prompt = [SpecialIds.BOS] + [5] * 64 + header + rows + [SpecialIds.IMG_END, SpecialIds.EOT]  # 64: instruction
    return prompt + header if cfg.image_only else prompt


TRAIN = DryRunApp(simulate_train, depth)
SAMPLE = DryRunApp(simulate_sample, depth)
