"""Structured configs (schema + documentation) for PURE pre-tokenisation and training.

YAML under `configs/pure/` holds values only; these dataclasses document every key and their
defaults are the official PURE values (`pure/scripts/train.sh`, spec pure.md §4-6). The model
block is PURE-MODEL's `ChameleonConfig` (configs/pure/model/*.yaml) and is validated there.
Registered in Hydra's ConfigStore as `pure_train_schema` / `pure_pretokenize_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import (
    DEVICE,
    PROBABILITY,
    SEED,
    CheckpointConfig,
    OptimConfig,
    RunConfig,
    above,
    at_least,
    between,
    checks,
    one_of,
)
from common.ema import EMAConfig


@dataclass
class PureOptimConfig(OptimConfig):
    """AdamW; defaults from PURE's train.sh (the lr schedule is the `schedule` section)."""

    lr: float = 4e-4  # peak LR (20x Lumina-mGPT's 2e-5)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2), official
    eps: float = 1e-8  # AdamW epsilon, official
    weight_decay: float = 0.1  # applied to ALL parameters, norms and embeddings included (official)
    grad_clip: float = 4.0  # global grad-norm clip
    grad_accum: int = 1  # micro-batches per optimizer step (with global_batch > 0: derived unless set > 1)
    lr_scaling: str = "none"  # official: the lr is used as given whatever the accumulation (xllmx)
    fused: bool | None = None  # fused AdamW kernel; None = when every parameter is on CUDA (common.parallel)


@checks(epochs=at_least(0.0), max_steps=at_least(0), warmup_epochs=at_least(0.0), min_lr=at_least(0.0))
@dataclass
class ScheduleConfig:
    """Length and lr schedule (same section as VARSR's). Steps are optimizer steps (one per
    `optim.grad_accum` micro-batches); the lr is set every step (pure.optim.lr_at)."""

    epochs: float = 2.0  # official 2 epochs
    max_steps: int = 0  # > 0 stops after this many optimizer steps instead of running all epochs
    warmup_epochs: float = 0.5  # linear warm-up from 0 over this many epochs (per-iteration update)
    min_lr: float = 0.0  # end of the half-cosine


@checks(z_loss_weight=at_least(0.0))
@dataclass
class LossConfig:
    """Training objective (pure.losses.PureLoss): CE over supervised next tokens (+ z-loss)."""

    z_loss_weight: float = 0.0  # w * mean(logsumexp^2) over positions whose own label is supervised; official 0


@checks(backend=one_of("none", "fsdp2", "deepspeed"), zero_stage=between(0, 3))
@dataclass
class ParallelConfig:
    """How the model is spread over devices; all of it is applied by pure/parallelize.py."""

    backend: str = "fsdp2"  # none | fsdp2 | deepspeed  (none = one process, plain AdamW)
    zero_stage: int = 3  # DeepSpeed ZeRO stage (0-3); 3 builds the model partitioned (deepspeed.zero.Init), so no
    #   rank ever holds the whole model (before: the full fp32 7B on every rank's host, ~226 GB per 8-GPU node)
    deepspeed_config: str | None = None  # optional yaml/json merged over the generated DeepSpeed config
    param_dtype: str = "bf16"  # compute dtype of parameters (FSDP2 MixedPrecisionPolicy / DeepSpeed bf16)
    reduce_dtype: str = "fp32"  # gradient reduction dtype (FSDP2)
    autocast: bool = True  # bf16 autocast around the forward on CUDA (official); ignored on CPU
    activation_checkpointing: str = "full"  # full (true) | selective | none (false): recompute each decoder
    #   layer in backward; selective keeps matmul/attention outputs and recomputes the rest (common.parallel)
    compile: bool = False  # torch.compile each decoder layer before sharding (backend fsdp2 | none, not deepspeed)
    compile_backend: str = "inductor"  # torch.compile backend (inductor | aot_eager | eager)
    cpu_offload: bool = False  # optimizer-state CPU offload: FSDP2 CPUOffloadPolicy / DeepSpeed ZeRO-Offload
    #   (offload_optimizer: cpu): fp32 params, grads and AdamW moments in host RAM, so 7B full fine-tuning
    #   fits one 80 GB GPU. Per-GPU and host figures: `dry_run=h100 nproc=1` (README "Dry runs" table).
    #   A single process is started through torchrun (world of one) so the sharding backend has a process group
    #   (DeepSpeed always gets one). On CUDA the group is cuda:nccl,cpu:gloo: clipping all-reduces the host-side norms.
    reshard_after_forward: bool = True  # FSDP2 FULL_SHARD (True) vs SHARD_GRAD_OP-like (False)


@checks(
    batch_size=at_least(1),
    num_workers=at_least(0),
    pad_to_multiple=at_least(1),
    max_seq_len=at_least(1),
    window_mult=at_least(1),
    prefetch_factor=at_least(1),
)
@dataclass
class PureDataConfig:
    """Pre-tokenised shards (pure/pretokenize.py) or an online degrade+encode dataset.

    No sequence packing: a 512 px PURE record is ~8.5 k tokens and max_seq_len 11,776, so two never
    fit one row; length-grouped batches (window_mult) already keep right-padding small."""

    meta: str = "configs/pure/data/bundled.yaml"  # data YAML: META: [{path: record.json, ratio, type}]
    batch_size: int = 4  # micro-batch per rank (official 4 per GPU); with optim.global_batch the largest one
    max_seq_len: int = 11776  # longer records are dropped at load time (official max_seq_len)
    window_mult: int = 500  # sampler shuffles within windows of global_batch * window_mult (official 500)
    pad_to_multiple: int = 64  # right-pad each batch to a multiple of this (kernel friendliness)
    num_workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    prefetch_factor: int = 2  # batches each worker prepares ahead (num_workers > 0)
    persistent_workers: bool = True  # keep workers alive between iterators (num_workers > 0)
    pin_memory: bool | None = None  # page-locked batches for async host->GPU copies; None = on CUDA
    online: bool = False  # degrade + VQ-encode HR crops per batch on the device (settings from `pretokenize`)


@checks(every_steps=at_least(0), peak_flops=above(0.0))
@dataclass
class LoggingConfig:
    """Metrics to wandb (offline by default), metrics.jsonl and the console (same section as VARSR's)."""

    every_steps: int = 10  # read the device-side loss/stat sums and log their window mean every N optimizer steps
    peak_flops: float = 989e12  # per-device peak for MFU (H100 SXM bf16 dense); set ~1e12 for CPU
    wandb: bool = True  # track with wandb (mode from run.wandb_mode)


@checks(extend_vocab_from=at_least(1))
@dataclass
class InitConfig:
    """Where the weights come from before training."""

    from_hf: str | None = None  # directory with HF shards (PURE or Lumina-mGPT) to start from
    extend_vocab_from: int | None = None  # e.g. 65536: checkpoint has fewer rows; add image rows (see train.py)
    vq_ckpt: str | None = None  # LlamaGen vq_ds8_c2i.pt (online mode / pre-tokenisation)


@dataclass
class ExportConfig:
    """HF-layout export at the end of training (official `from_pretrained` loads it)."""

    hf_dir: str | None = None  # write HF-layout safetensors shards + config.json here at the end (None = off)
    max_shard_size: str = "5GB"  # per shard file (HF size string)
    dtype: str = "bf16"  # tensor dtype of the shards: bf16 (released PURE) | fp32 | fp16
    # an existing hf_dir is refused (checked at start) unless true; then it is replaced as a whole, never merged
    overwrite: bool = False


@checks(
    batch_size=at_least(1),
    num_workers=at_least(1),
    shard_size=at_least(1),
    target_size=at_least(1),
    device=DEVICE,
    lq_scale=at_least(1),
    max_seq_len=at_least(1),
    seed=SEED,
    limit=at_least(0),
)
@dataclass
class PretokenizeConfig:
    """Everything `launch/pretokenize_pure.py` accepts."""

    out_dir: str = "data/pure_tokens"  # shards, per-shard JSONL indices, record.json, progress files
    images: list[str] = field(default_factory=list)  # HR folders; "bundled" = the CC0 photos (written under out_dir)
    target_size: int = 512  # MUST be 512 (two 768 images exceed max_seq_len)
    lq_scale: int = 4  # LQ = HR/lq_scale (PURE: 4), bicubic-resized back to target_size before VQ encoding
    degradation: str = "realesrgan"  # common.degradation preset (SeeSR offline = realesrgan)
    captions: str | None = None  # captions JSONL {id, caption}; None -> empty description
    degradation_scores: str | None = None  # optional score file (id, blur, noise) instead of the sampled params
    vq_ckpt: str | None = None  # LlamaGen VQ weights; None -> random VQ (tests / plumbing only)
    tokenizer: str | None = None  # text_tokenizer.json; None -> build_test_tokenizer
    vocab_map: str | None = None  # config.json with vocabulary_map; None -> synthetic code map
    shard_size: int = 1000  # records per shard file
    num_workers: int = 1  # local worker processes when not under torchrun (one shard stream each)
    max_seq_len: int = 11776  # reject longer records instead of truncating them
    seed: int = 0  # crops, kernels and degradations derive from it (deterministic on resume)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (degrade + VQ encode)
    batch_size: int = 4  # images degraded + encoded together
    limit: int | None = None  # only the first N items (smoke runs)
    convert_official: str | None = None  # official record JSON of pickles to convert instead
    trusted: bool = False  # required with convert_official: unpickling executes code


@checks(dropout=PROBABILITY)
@dataclass
class PureTrainConfig:
    """Everything `launch/train_pure.py` accepts."""

    run: RunConfig = field(default_factory=lambda: RunConfig(run_dir="runs/pure", wandb_project="pure"))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    optim: PureOptimConfig = field(default_factory=PureOptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: PureDataConfig = field(default_factory=PureDataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    init: InitConfig = field(default_factory=InitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    model: Any = None  # ChameleonConfig fields (configs/pure/model/*.yaml), validated by pure.model
    dropout: float = 0.05  # residual dropout during training (overrides model.dropout)
    pretokenize: PretokenizeConfig = field(default_factory=PretokenizeConfig)  # data prep of this experiment
    sample: Any = None  # sampling keys of this experiment, read by launch/sample_pure.py (ignored here)
    nproc: str = "auto"  # ranks launch/train_pure.py starts itself when not under torchrun/deepspeed/SLURM:
    #   auto = visible CUDA devices (1 on CPU), or an integer (nproc=2 run.device=cpu: 2 gloo ranks)
    dry_run: str | None = None  # h100 | h200 | a100_80 | a100_40 | rtx4090 | <GiB>: simulate one optimizer step of
    #   `nproc` ranks at full size on fake tensors, print memory / FLOPs / collectives and exit (2: does not fit)
    preflight: bool = True  # on CUDA, refuse (exit 2, one line) a config whose cheap estimate does not fit the GPU


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="pure_train_schema", node=PureTrainConfig)
    cs.store(name="pure_pretokenize_schema", node=PretokenizeConfig)


register_configs()  # the schema heads configs/pure/train.yaml's defaults list
