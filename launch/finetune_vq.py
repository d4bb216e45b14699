"""Fine-tune an image tokenizer (VARSR's VQVAE or PURE's VQ-8) on your own images.

    python launch/finetune_vq.py app=varsr size=full init=VQVAE.pth data=lsdir_ffhq \\
        crop_size=512 batch_size=8 steps=20000 lr=1e-4 out=runs/vq/VQVAE_ft.pth
    python launch/finetune_vq.py app=pure size=full init=vq_ds8_c2i.pt 'data.sources=[{root: /my/photos}]' \\
        crop_size=256 out=runs/vq/vq_ds8_ft.pt
    python launch/finetune_vq.py app=pure size=tiny crop_size=32 batch_size=4 lr=2e-3 steps=600 \
        out=runs/vq/tiny_vq.pt   # CPU from scratch: ~330 CPU-s, ~17 dB PSNR on held-out 96 px crops

From scratch the tiny tokenizers learn slowly on CPU (measured on the bundled photos: the tiny
VARSR VQVAE stays near 12 dB for its first 200 steps; the tiny VQ-8 reaches ~17 dB after 600);
fine-tuning from a released tokenizer (`init=`) is the intended use.

Writes ``out`` in the layout the apps load (VARSR: {'trainer': {'vae_local'}} for
`varsr.official.load_official_vqvae`; PURE: {'model'} for `pure.official.load_llamagen_vq`),
plus ``run_dir`` (default ``<out>_run``: checkpoints/, metrics.jsonl, recon.png). Re-running
the same command resumes from the newest checkpoint. Schema: `VQFinetuneConfig` below.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

import torch  # noqa: E402

from common.config import DEVICE, FINITE, SEED, at_least, checks, one_of, run_app  # noqa: E402
from common.data import HRTrainDataset, ImageSource  # noqa: E402
from common.dist import seed_everything  # noqa: E402
from common.vq_finetune import FinetuneSettings, finetune, hr_stream  # noqa: E402
from varsr.config import SourceConfig  # noqa: E402  (the shared data groups' source schema)


@dataclass
class FTData:
    """Training images (the shared `data` group: bundled | lsdir_ffhq | a list of sources)."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="bundled")])


@checks(
    app=one_of("varsr", "pure"),
    size=one_of("tiny", "full"),
    seed=SEED,
    device=DEVICE,
    crop_size=at_least(1),
    crop_mode=one_of("random", "resize_center", "resize_random"),
    batch_size=at_least(1),
    num_workers=at_least(0),
    steps=at_least(0),
    lr=at_least(0.0),
    weight_decay=at_least(0.0),
    grad_clip=FINITE,
    beta=at_least(0.0),
    lpips_weight=at_least(0.0),
    eval_size=at_least(1),
    eval_count=at_least(1),
    log_every=at_least(1),
    ckpt_every=at_least(0),
    wandb_mode=one_of("offline", "online", "disabled"),
)
@dataclass
class VQFinetuneConfig:
    app: str = "varsr"  # varsr (multi-scale VQVAE) | pure (LlamaGen VQ-8)
    size: str = "tiny"  # tiny | full (VARSR's VQVAE.pth / LlamaGen's vq_ds8_c2i.pt shape)
    init: str | None = None  # start from this tokenizer file (official layout); None = random init
    out: str = "runs/vq_finetune/tokenizer.pth"  # exported tokenizer
    run_dir: str | None = None  # checkpoints + metrics; None -> "<out without suffix>_run"
    seed: int = 0  # model init and data order
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    data: FTData = field(default_factory=FTData)
    crop_size: int = 96  # train crop side; VARSR needs 16 * patch_nums[-1] (96 tiny, 512 full),
    #                      PURE any multiple of its downsampling (2 tiny, 8 full)
    crop_mode: str = "random"  # random (native pixels) | resize_center | resize_random (common.data)
    batch_size: int = 8  # images per step
    num_workers: int = 0  # DataLoader workers (0: load in the main process, fine for small crops)
    steps: int = 1000  # optimizer steps
    lr: float = 1e-4  # AdamW lr (fine-tuning; 1e-3..2e-3 for the tiny tokenizers from scratch)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm (<= 0 disables)
    beta: float = 0.25  # commitment weight (VAR / LlamaGen default)
    lpips_weight: float = 0.0  # > 0 adds LPIPS (needs the pyiqa LPIPS weights offline)
    lpips_weights_dir: str | None = None  # where LPIPS_v0.1_alex-*.pth and alexnet-*.pth live
    eval_size: int = 96  # side of the fixed held-out crops scored (PSNR) and saved to recon.png
    eval_count: int = 6  # how many of them
    log_every: int = 10  # steps between metrics.jsonl rows
    ckpt_every: int = 500  # steps between resumable checkpoints
    wandb_mode: str = "offline"  # offline | online | disabled


def _app(cfg: VQFinetuneConfig):
    """(model, step_fn, export_fn, required crop side or None) for the chosen app."""
    if cfg.size not in ("tiny", "full"):
        raise ValueError(f"size must be tiny or full, got {cfg.size!r}")
    if cfg.app == "varsr":
        from varsr import vqvae_finetune as ft

        return ft.build_vqvae(cfg.size, cfg.init), ft.step_fn(cfg.beta), ft.export_vqvae, ft.crop_for(cfg.size)
    if cfg.app == "pure":
        from pure import vq_finetune as ft

        return ft.build_vq(cfg.size, cfg.init), ft.step_fn(cfg.beta), ft.export_vq, None
    raise ValueError(f"app must be varsr or pure, got {cfg.app!r}")


def _sources(cfg: VQFinetuneConfig) -> list[ImageSource]:
    if not cfg.data.sources:
        raise ValueError("data.sources is empty")
    return [
        ImageSource(
            root=s.root,
            kind=s.kind,
            label=s.label,
            ratio=s.ratio,
            limit=s.limit,
            meta=s.meta,
            resize_shorter_to=s.resize_shorter_to,
        )
        for s in cfg.data.sources
    ]


def run(cfg: VQFinetuneConfig) -> dict:
    """Build, train (resuming if possible), export; returns the loop's final stats + "out"."""
    from common.paths import check_apart

    # the tokenizer file and the run dir never land among the training images (checked before any write)
    roots = {f"data.sources.{i}.root": s.root for i, s in enumerate(cfg.data.sources) if s.root}
    out = Path(cfg.out)
    run_dir = cfg.run_dir or str(out.with_suffix("")) + "_run"
    check_apart(out, "out", roots)
    check_apart(run_dir, "run_dir", roots, contains_ok=True)
    seed_everything(cfg.seed)
    model, step_fn, export, need = _app(cfg)
    for key in ("crop_size", "eval_size"):
        if need is not None and getattr(cfg, key) != need:
            raise ValueError(
                f"{key}={getattr(cfg, key)}: the {cfg.size} VARSR VQVAE needs {need} px (16 * its last patch_num)"
            )
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    sources = _sources(cfg)
    train = HRTrainDataset(sources, crop_size=cfg.crop_size, crop_mode=cfg.crop_mode, seed=cfg.seed)
    # Held-out crops: same photos, different positions (another seed), no flip.
    held = HRTrainDataset(sources, crop_size=cfg.eval_size, crop_mode=cfg.crop_mode, hflip=False, seed=cfg.seed + 7919)
    eval_hr = torch.stack([held[i]["hr"] for i in range(min(cfg.eval_count, len(held)))])
    settings = FinetuneSettings(
        run_dir=run_dir,
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        lpips_weight=cfg.lpips_weight,
        lpips_weights_dir=cfg.lpips_weights_dir,
        log_every=cfg.log_every,
        ckpt_every=cfg.ckpt_every,
        wandb_mode=cfg.wandb_mode,
        project=f"{cfg.app}-vq",
    )
    stats = finetune(
        model,
        step_fn,
        hr_stream(train, cfg.batch_size, cfg.num_workers),
        settings,
        device,
        config={
            "app": cfg.app,
            "size": cfg.size,
            "init": cfg.init,
            "crop_size": cfg.crop_size,
            "batch_size": cfg.batch_size,
            "beta": cfg.beta,
        },
        eval_hr=eval_hr,
    )
    export(model, out)
    return {**stats, "out": str(out)}


def main(argv: list[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    stats = run_app("common", "vq_finetune", VQFinetuneConfig, run, args)  # user errors: one line, exit 2
    if stats:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return stats


if __name__ == "__main__":
    main()
