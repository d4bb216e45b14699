"""Structured config of VARSR training: every key documented, defaults = the official recipe.

Sources of the defaults: VARSR README training command
(`--depth=24 --batch_size=4 --ep=5 --fp16=1 --tblr=5e-5 --alng=1e-4 --wpe=0.01 --fuse=0`),
`utils/arg_util.py` and `utils/lr_control.py` (spec varsr.md §5-§8, common.md §1.7).

The dataclasses are registered in Hydra's ConfigStore as ``varsr_train_schema``; the primary
``configs/varsr/train.yaml`` starts its defaults list with it, so YAML files hold values only and
a typo in an override is an error at start-up. Model and degradation nodes reuse the owners'
dataclasses (``VARSRModelConfig``, ``DegradationConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import (
    PROBABILITY,
    SEED,
    CheckpointConfig,
    OptimConfig,
    Rule,
    RunConfig,
    above,
    at_least,
    checks,
    one_of,
)
from common.degradation.presets import DegradationConfig, get_preset
from common.ema import EMAConfig  # shared with PURE: enabled, decay, start_step, use_for_eval
from varsr.model.config import VARSRModelConfig, model_config
from varsr.optim import NO_DECAY_KEYS  # the official no-decay name list, kept in one place


@checks(label=at_least(0), ratio=at_least(0.0), limit=at_least(0), resize_shorter_to=at_least(1), holdout=at_least(0))
@dataclass
class SourceConfig:
    """One image source (mirrors ``common.data.sources.ImageSource``)."""

    root: str = ""  # folder / manifest path; "" with kind=bundled = the embedded scikit-image photos
    kind: str = "folder"  # folder | lsdir | ffhq | manifest | bundled | classes (C2I: one class per sub-folder,
    #                       label = index of the sub-folder in sorted order)
    label: int = 0  # sr mode: 0 = positive (HQ photo), 1 = negative (low-MOS IQA image); ignored for classes
    ratio: float = 1.0  # per-epoch draws = round(ratio * len(source)); <1 subsamples, >1 repeats
    limit: int | None = None  # keep only the first N sorted files (ffhq: 10,000 = FFHQ10k)
    meta: str | None = None  # lsdir: train.json / list file
    resize_shorter_to: int | None = None  # per-source shorter-side resize (VARSR: 640 positives, 512 negatives)
    holdout: int = 0  # classes: keep the last N sorted images of each class out of training (official C2I: 50)


@checks(
    batch_size=at_least(1),
    num_workers=at_least(0),
    crop_size=at_least(1),
    resize_shorter_to=at_least(1),
    min_size=at_least(0),
    prefetch_factor=at_least(1),
)
@dataclass
class DataConfig:
    """Training batches: HR crops (+ CPU-sampled kernels) -> on-device degradation -> [-1, 1]."""

    # training images, mixed per epoch by each source's ratio (default: the bundled photos, for smoke runs)
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="bundled", resize_shorter_to=640)])
    crop_size: int = 512  # HR crop side; the LR is resized back to this size (1024 prefix tokens at 512)
    crop_mode: str = "resize_center"  # VARSR: resize shorter side (LANCZOS) then centre crop 512;
    #                                   C2I (spec 7): resize_random (same resize, random crop)
    resize_shorter_to: int | None = 640  # round(1.25 * 512); sources may override (negatives: 512); C2I: 576
    hflip: bool = True  # random horizontal flip in the dataset (the degradation flips again in official code)
    min_size: int = 0  # skip images whose shorter side is below this (0 = keep all, resize handles it)
    batch_size: int = 4  # per-rank micro-batch (official: 4 per GPU, 8 GPUs -> 32); with optim.global_batch the largest
    num_workers: int = 4  # DataLoader workers: read + crop + kernel sampling (the degradation itself runs
    #                       batched on the training device in varsr.data.BatchMaker)
    prefetch_factor: int = 2  # batches prefetched per worker
    persistent_workers: bool = True  # keep workers alive between iterators (num_workers > 0)
    pin_memory: bool | None = None  # page-locked batches for async host->GPU copies; None = on CUDA
    lq_mode: str = "degrade"  # degrade = common.degradation pipeline | bicubic = deterministic x1/scale and back


@checks(
    epochs=at_least(0.0),
    max_steps=at_least(0),
    warmup_epochs=at_least(0.0),
    warmup_start=PROBABILITY,
    flat_fraction=PROBABILITY,
    end_ratio=PROBABILITY,
)
@dataclass
class ScheduleConfig:
    """Length and lr schedule. Steps are optimizer steps (one per ``optim.grad_accum`` micro-batches)."""

    epochs: float = 5.0  # official --ep=5
    max_steps: int = 0  # > 0 overrides epochs
    warmup_epochs: float = 0.1  # official wp = ep/50 = 0.1 epoch
    warmup_start: float = 0.005  # official wp0: warm-up starts at 0.005 * peak
    flat_fraction: float = 0.3  # VARSR lin0: constant for 30 % of the post-warm-up steps (VAR used 5 %)
    end_ratio: float = 0.01  # official wpe=0.01: final lr = 0.01 * peak


@dataclass
class VARSROptimConfig(OptimConfig):
    """AdamW (see common OptimConfig: lr 5e-5, betas (0.9, 0.95), wd 0.05, clip 2.0)."""

    lr_scaling: str = "accum"  # official: the peak lr is optim.lr x the accumulation count (tlr = ac * tblr)

    # substrings that exclude a parameter from weight decay (plus all 1-D params and biases)
    no_decay_keys: list[str] = field(default_factory=lambda: list(NO_DECAY_KEYS))
    fused: bool | None = None  # fused AdamW; None = on CUDA only


@checks(dtype=one_of("fp32", "bf16", "fp16"), init_scale=above(0.0), growth_interval=at_least(1), max_scale=above(0.0))
@dataclass
class PrecisionConfig:
    """Autocast dtype and loss scaling."""

    dtype: str = "fp16"  # fp32 | bf16 | fp16 (official --fp16=1; --fp16=2 is bf16 without scaler)
    init_scale: float = 2.0**11  # GradScaler initial scale (official AmpOptimizer)
    growth_interval: int = 1000  # steps without overflow before the scale doubles
    max_scale: float = 2.0**15  # cap on the loss scale (official clamps the scaler at 2^15)
    tf32: bool = True  # allow TF32 matmuls on Ampere+ (official)


@checks(backend=one_of("ddp", "fsdp2", "none"), param_dtype=one_of("auto", "fp32", "bf16", "fp16"))
@dataclass
class ParallelConfig:
    """How the transformer is wrapped (varsr/parallelize.py)."""

    backend: str = "ddp"  # ddp | fsdp2 | none
    activation_checkpointing: str = "none"  # none (false) | full (true) | selective: recompute each block in
    #   backward; selective keeps matmul/attention outputs and recomputes the element-wise rest (common.parallel)
    compile: bool = False  # torch.compile each transformer block in place before DDP/FSDP2 wrapping
    compile_backend: str = "inductor"  # torch.compile backend (inductor | aot_eager | eager)
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy (backend=fsdp2): fp32 params, grads and AdamW state in
    #   host RAM, optimizer step on the CPU; a single process is started as a torchrun world of one. Whether a
    #   setting fits: `dry_run=h100 nproc=N` (README "Dry runs" table).
    param_dtype: str = "auto"  # FSDP2 MixedPrecisionPolicy compute dtype of the blocks' parameters: auto = the
    #   autocast dtype precision.dtype (fp16 in the official recipe); fp32 | bf16 | fp16. A low-precision dtype
    #   other than the autocast one cannot run (autocast refuses to mix fp16 and bf16). The root (prefix encoder,
    #   embeddings, head, refiner) keeps fp32 parameters, as under DDP.
    reduce_dtype: str = "fp32"  # gradient reduce-scatter dtype
    reshard_after_forward: bool = True  # free per-block params after forward (ZeRO-3 style)
    find_unused_parameters: bool = False  # DDP: every parameter receives a gradient every step


@dataclass
class VARSRCheckpointConfig(CheckpointConfig):
    """Resumable checkpoints (common CheckpointConfig) plus the final official-layout export."""

    export_official: bool = True  # write run_dir/export/{VARSR,VQVAE}.pth in the official trainer layout at the end


@checks(every_steps=at_least(0))
@dataclass
class LoggingConfig:
    every_steps: int = 20  # metrics to wandb (offline) and the console every N optimizer steps


@checks(
    every_steps=at_least(0),
    num_images=at_least(1),
    seed=SEED,
    cfg=at_least(0.0),
    samples_per_class=at_least(1),
    classes=Rule(lambda v: all(isinstance(c, int) and c >= 0 for c in v), "class ids >= 0"),
)
@dataclass
class ValidationConfig:
    """Periodic validation. sr: a grid LR | SR | HR and PSNR (LPIPS when weights are available).
    c2i: a grid with one row of ``samples_per_class`` samples per class (``varsr.sample_c2i``)."""

    every_steps: int = 1000  # official evaluates every 1000 iterations; 0 disables
    root: str = ""  # sr: folder of HR images ("" = embedded photos); LR made with the training degradation
    num_images: int = 4  # sr: images in the grid; c2i: classes shown when `classes` is empty
    seed: int = 1234  # sr: degradation seed of the validation LR; both: sampling seed (same inputs every time)
    cfg: float = 6.0  # CFG weight for sampling (official SR test default 6.0; C2I test_C2I.py uses 4.0)
    metrics: list[str] = field(default_factory=lambda: ["psnr", "lpips"])  # sr; lpips skipped without weights
    classes: list[int] = field(default_factory=list)  # c2i: class ids, one grid row each ([] = first num_images)
    samples_per_class: int = 4  # c2i: samples per row (top_k 20, top_p 0.75 as in test_C2I.py)


@dataclass
class InitConfig:
    """Where the weights start (varsr.official loaders)."""

    varsr: str = ""  # sr: official VARSR.pth (or our export) to fine-tune from
    vqvae: str = ""  # official VQVAE.pth; required for real training (VARSR's own tokenizer)
    c2i: str = ""  # sr: VARSR_C2I.pth or FoundationVision var_d24.pth: transfer with shape-mismatch drops
    c2i_official: str = ""  # c2i: VARSR_C2I.pth (or our C2I export) loaded strictly to continue pretraining
    allow_random_vqvae: bool = False  # tests/benchmarks only: train against a randomly initialised tokenizer


@checks(diff_weight=at_least(0.0))
@dataclass
class LossConfig:
    diff_weight: float = 2.0  # weight of the diffusion-refiner loss (spec §5)


@dataclass
class VARSRTrainConfig:
    """Root node of ``configs/varsr/train.yaml``."""

    run: RunConfig = field(default_factory=lambda: RunConfig(run_dir="runs/varsr", wandb_project="varsr"))
    mode: str = "sr"  # sr (LR-conditioned, labels 0/1) | c2i (class-conditional pretraining, label = class)
    model: VARSRModelConfig = field(default_factory=lambda: model_config("d24"))
    degradation: DegradationConfig = field(default_factory=lambda: get_preset("varsr_mild"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: VARSROptimConfig = field(default_factory=VARSROptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: VARSRCheckpointConfig = field(default_factory=VARSRCheckpointConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    nproc: str = "auto"  # ranks launch/train_varsr.py starts itself when not under torchrun/deepspeed/SLURM:
    #   auto = visible CUDA devices (1 on CPU), or an integer (nproc=2 run.device=cpu: 2 gloo ranks)
    dry_run: str | None = None  # h100 | h200 | a100_80 | a100_40 | rtx4090 | <GiB>: simulate one optimizer step of
    #   `nproc` ranks at full size on fake tensors, print memory / FLOPs / collectives and exit (2: does not fit)
    preflight: bool = True  # on CUDA, refuse (exit 2, one line) a config whose cheap estimate does not fit the GPU


def tiny_train_config(run_dir: str, **sections) -> VARSRTrainConfig:
    """The tiny CPU configuration used by tests and the CPU benchmark (mirrors ``exp/quick.yaml``).

    Tiny model at 96 px on one bundled photo source, fp32, no workers, deterministic bicubic LR,
    random tokenizer. ``sections`` replace whole sub-configs, e.g. ``data=DataConfig(...)``.
    """
    cfg = VARSRTrainConfig(
        run=RunConfig(run_dir=str(run_dir), seed=0, wandb_mode="disabled", device="cpu"),
        model=model_config("tiny"),
        data=DataConfig(
            sources=[SourceConfig(kind="bundled", resize_shorter_to=120)],
            crop_size=96,
            resize_shorter_to=120,
            hflip=False,
            batch_size=2,
            num_workers=0,
            lq_mode="bicubic",
        ),
        optim=VARSROptimConfig(lr=1e-3),
        schedule=ScheduleConfig(max_steps=20, warmup_epochs=0.0),
        precision=PrecisionConfig(dtype="fp32"),
        parallel=ParallelConfig(backend="none"),
        checkpoint=VARSRCheckpointConfig(every_steps=0, keep=2, export_official=False),
        logging=LoggingConfig(every_steps=0),
        validation=ValidationConfig(every_steps=0, num_images=2, metrics=["psnr"]),
        init=InitConfig(allow_random_vqvae=True),
    )
    for name, value in sections.items():
        setattr(cfg, name, value)
    return cfg


def check_train_config(cfg: VARSRTrainConfig) -> None:
    """Cross-key consistency that the schema cannot express; one-line ValueError on a mismatch."""
    if cfg.mode not in ("sr", "c2i"):
        raise ValueError(f"mode must be sr | c2i, got {cfg.mode!r}")
    m, ic = cfg.model, cfg.init
    if cfg.mode == "c2i" and m.lr_prefix:
        raise ValueError(
            "mode=c2i needs a C2I-shaped transformer (model.lr_prefix=false, e.g. model=c2i_d24 "
            "or model=c2i_tiny), got an SR model (lr_prefix=true)"
        )
    if cfg.mode == "sr" and not m.lr_prefix:
        raise ValueError(
            "mode=sr needs an SR transformer (model.lr_prefix=true); lr_prefix=false is the "
            "C2I pretraining model (mode=c2i)"
        )
    if cfg.data.crop_size != m.image_size:
        raise ValueError(
            f"data.crop_size={cfg.data.crop_size} must equal the model's image size {m.image_size} "
            f"(16 x last patch_num {m.patch_nums[-1]})"
        )
    fsdp_param_dtype(cfg.parallel.param_dtype, cfg.precision.dtype)
    if cfg.mode == "c2i" and (ic.varsr or ic.c2i):
        raise ValueError("init.varsr / init.c2i initialise an SR model; for mode=c2i use init.c2i_official")
    if cfg.mode == "sr" and ic.c2i_official:
        raise ValueError(
            "init.c2i_official loads a C2I model (mode=c2i); to start SR training from a C2I "
            "checkpoint use init.c2i (transfer)"
        )


def fsdp_param_dtype(param_dtype: str, amp: str) -> str:
    """``parallel.param_dtype`` resolved against the autocast dtype ``precision.dtype`` (auto = ``amp``).

    ValueError for fp16 parameters under bf16 autocast or the reverse: autocast's type promotion
    refuses to mix the two low-precision types (the attention bias concatenation is the first op).
    """
    if param_dtype == "auto":
        return amp
    if "fp32" not in (amp, param_dtype) and amp != param_dtype:
        raise ValueError(
            f"parallel.param_dtype={param_dtype} cannot run under precision.dtype={amp} autocast; "
            f"use parallel.param_dtype=auto (= {amp}) or fp32, or precision.dtype={param_dtype}"
        )
    return param_dtype


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="varsr_train_schema", node=VARSRTrainConfig)


def load_train_config(overrides: list[str] | None = None) -> VARSRTrainConfig:
    """Compose ``configs/varsr/train.yaml`` with overrides and return a typed dataclass."""
    from common.config import compose_config, to_dataclass

    register_configs()
    return to_dataclass(VARSRTrainConfig, compose_config("varsr", "train", overrides or []))


register_configs()
