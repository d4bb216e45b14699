"""The quickstart's main job: every stage of both pipelines, end to end, on CPU in a few minutes.

On the embedded default data (scikit-image's bundled CC0 / public-domain photos) it
1. writes the HR photos and a degraded test set (``launch/degrade.py``),
2. scores a bicubic baseline (``launch/evaluate.py``),
3. trains the tiny VARSR, samples the test set with it and scores it,
4. trains the tiny PURE, restores the test set with it and scores it,
5. writes ``<out_dir>/report.md`` (metric table + LR | bicubic | VARSR | PURE | HR grid).

Each stage runs the same command line a user would type, so the demo also proves that the
launchers, configs and checkpoints fit together. Usage: ``python launch/demo.py [out_dir=runs/demo]
[varsr_steps=N] [pure_steps=N] [skip=[pure]]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import validate  # noqa: E402  (registers the shared config search path)


@dataclass
class DemoConfig:
    """Knobs of the quickstart job."""

    out_dir: str = "runs/demo"  # everything is written below this directory
    seed: int = 0  # seed of the degradation and of both training runs
    degradation: str = "varsr_mild"  # degradation preset for the synthetic test set
    test_size: int = 96  # HR side of the test crops = the tiny models' image size (LR is test_size / 4)
    varsr_steps: int = 120  # optimizer steps of the tiny VARSR run
    pure_steps: int = 60  # optimizer steps of the tiny PURE run
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "niqe"])  # offline metrics
    skip: list[str] = field(default_factory=list)  # stages to skip: varsr, pure


def run(cmd: list[str], log: Path) -> None:
    """Run one stage as a user would, streaming its output to a log file; fail with its tail."""
    t0 = time.time()
    print(f"$ {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"stage failed ({log}):\n{tail}")
    print(f"  done in {time.time() - t0:.0f}s (log: {log})", flush=True)


def bicubic_baseline(lr_dir: Path, out_dir: Path, size: int) -> None:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(lr_dir.glob("*.png")):
        Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC).save(out_dir / p.name)


def write_report(out: Path, rows: list[dict], columns: dict[str, Path], hr_dir: Path) -> None:
    import torch
    from PIL import Image

    from common.logging import markdown_table, plot_curves, save_image_grid, write_table

    write_table(rows, out / "metrics")
    names = sorted(p.name for p in hr_dir.glob("*.png"))[:4]

    def load(p: Path):
        img = Image.open(p).convert("RGB")
        return torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1).float() / 255

    grid_rows = [[load(d / n) for d in columns.values()] for n in names]
    save_image_grid(grid_rows, out / "grid.png", labels=list(columns))
    curves = {
        title: (out / run / "metrics.jsonl", keys)
        for title, run, keys in (
            ("VARSR (CE + 2 x refiner)", "varsr", ["train/loss", "train/ce", "train/diff"]),
            ("PURE (next-token CE)", "pure", ["loss", "ce_text", "ce_image"]),
        )
        if (out / run / "metrics.jsonl").exists()
    }
    if curves:
        plot_curves(curves, out / "curves.png")
    (out / "report.md").write_text(
        "# arsr demo report\n\nTiny models trained for minutes on the bundled photos, decoding through "
        "untrained (random) tiny image tokenizers: the SR columns are noise and the numbers only show that "
        "every stage (degrade, train, export, sample, evaluate) runs end to end. Real weights: see README.\n\n"
        + markdown_table(rows)
        + "\n\n![grid](grid.png)\n"
        + ("\n![training curves](curves.png)\n" if curves else "")
    )


from hydra.core.config_store import ConfigStore  # noqa: E402

ConfigStore.instance().store(name="demo", node=DemoConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="demo")
def main(raw) -> None:
    cfg = validate(DemoConfig, raw)
    out = (ROOT / cfg.out_dir).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    hydra_quiet = [
        "hydra.run.dir=" + str(out / ".hydra_runs" / "${now:%H-%M-%S-%f}"),
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]

    from common.data.bundled import write_bundled_dataset

    photos = write_bundled_dataset(out / "photos", size=512)
    test = out / "testset"
    run(
        [
            py,
            "launch/degrade.py",
            f"hr_dir={photos / 'HR'}",
            f"out_dir={test}",
            "overwrite=true",
            f"degradation={cfg.degradation}",
            f"seed={cfg.seed}",
            f"crop={cfg.test_size}",
            *hydra_quiet,
        ],
        logs / "degrade.log",
    )

    columns = {"LR": test / "LR"}
    rows = []

    def score(name: str, sr_dir: Path) -> None:
        res = out / f"metrics_{name}.json"
        metrics = "[" + ",".join(cfg.metrics) + "]"
        run(
            [
                py,
                "launch/evaluate.py",
                f"sr_dir={sr_dir}",
                f"hr_dir={test / 'HR'}",
                f"metrics={metrics}",
                f"out={res}",
                *hydra_quiet,
            ],
            logs / f"evaluate_{name}.log",
        )
        summary = json.loads(res.read_text())
        means = summary.get("mean", summary)
        rows.append({"method": name, **{k: means[k] for k in cfg.metrics if k in means}})
        columns[name] = sr_dir

    bicubic_baseline(test / "LR", out / "sr_bicubic", cfg.test_size)
    score("bicubic", out / "sr_bicubic")

    if "varsr" not in cfg.skip:
        vrun = out / "varsr"
        # The tiny VQVAE is trained with nothing (random init): the export holds it next to the
        # transformer (official layout, 'vae_local'), so the same file serves as both checkpoints.
        run(
            [
                py,
                "launch/train_varsr.py",
                "+exp=quick",
                f"run.run_dir={vrun}",
                f"run.seed={cfg.seed}",
                f"schedule.max_steps={cfg.varsr_steps}",
            ],
            logs / "train_varsr.log",
        )
        export = vrun / "export" / "VARSR.pth"
        run(
            [
                py,
                "launch/sample_varsr.py",
                "model=tiny",
                f"ckpt={export}",
                f"vae_ckpt={export}",
                f"lr_dir={test / 'LR'}",
                f"out_dir={out / 'sr_varsr'}",
                f"out_size={cfg.test_size}",
                "metrics=[]",
                "skip_existing=false",
                "overwrite=true",  # a re-run retrains, so its outputs replace the old ones
                "device=cpu",
                *hydra_quiet,
            ],
            logs / "sample_varsr.log",
        )
        score("varsr", out / "sr_varsr")

    if "pure" not in cfg.skip:
        prun = out / "pure"
        tokens = prun / "tokens"
        # LQ/HQ pairs of the bundled photos -> degradation text + VQ codes -> sharded token files.
        run(
            [py, "launch/pretokenize_pure.py", "+exp=quick", f"pretokenize.out_dir={tokens}"],
            logs / "pretokenize_pure.log",
        )
        run(
            [
                py,
                "launch/train_pure.py",
                "+exp=quick",
                f"run.run_dir={prun}",
                f"run.seed={cfg.seed}",
                f"data.meta={tokens / 'record.json'}",
                f"schedule.max_steps={cfg.pure_steps}",
                f"export.hf_dir={prun / 'export'}",
            ],
            logs / "train_pure.log",
        )
        run(
            [
                py,
                "launch/sample_pure.py",
                "+exp=quick",
                f"ckpt_dir={prun / 'export'}",
                f"lr_dir={test / 'LR'}",
                f"out_dir={out / 'sr_pure'}",
                f"out_size={cfg.test_size}",
                "metrics=[]",
                "device=cpu",
                "skip_existing=false",
                "overwrite=true",
                *hydra_quiet,
            ],
            logs / "sample_pure.log",
        )
        score("pure", out / "sr_pure")

    columns["HR"] = test / "HR"
    write_report(out, rows, columns, test / "HR")
    print((out / "report.md").read_text())
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


if __name__ == "__main__":
    main()
