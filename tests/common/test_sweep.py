"""Sweep summary (common.sweep): per-point files -> one table + one figure per Hydra multirun.

The end-to-end tests run real 2x2 cfg x temperature sweeps of the tiny VARSR and the tiny PURE and
check each table row against PSNR recomputed here (from the formula) on the job's output images;
an evaluation sweep goes through submitit's local launcher (every job in its own process, the
summary built afterwards in the submitting process from files only: the SLURM code path); an
Optuna search checks that jobs hand the chosen metric to the sweeper.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from common.sweep import SweepSummary, point_metrics, summarize, write_point

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_marks_best_per_metric_by_direction(tmp_path):
    # psnr/ssim: higher is better; lpips/niqe: lower is better (written here, not read from code)
    points = {
        (4, 0.7): {"psnr": 20.0, "ssim": 0.61, "lpips": 0.30, "niqe": 5.0},
        (4, 0.9): {"psnr": 21.5, "ssim": 0.60, "lpips": 0.35, "niqe": 4.1},
        (6, 0.7): {"psnr": 19.0, "ssim": 0.65, "lpips": 0.25, "niqe": 4.6},
        (6, 0.9): {"psnr": 18.0, "ssim": 0.55, "lpips": 0.40, "niqe": 6.0},
    }
    for n, ((cfg, t), m) in enumerate(points.items()):
        # nested job dirs, as a SLURM sweep's `subdir` may make them; a failed point has no metrics
        write_point(
            tmp_path / "a" / f"job{n}",
            [f"cfg={cfg}", f"temperature={t}", "lr_dir=/x"],
            "completed",
            {"mean": m, "lower_better": ["lpips", "niqe"]},
            job_num=n,
        )
    write_point(tmp_path / "job4", ["cfg=8", "temperature=0.7", "lr_dir=/x"], "failed", None, job_num=4)
    paths = summarize(tmp_path)
    rows = _rows(paths["csv"])
    assert [(r["cfg"], r["temperature"]) for r in rows] == [
        ("4", "0.7"),
        ("4", "0.9"),
        ("6", "0.7"),
        ("6", "0.9"),
        ("8", "0.7"),
    ]
    assert "lr_dir" not in rows[0]  # not swept -> not a column
    assert [r["best"] for r in rows] == ["", "psnr;niqe", "ssim;lpips", "", ""]
    assert rows[4]["status"] == "failed" and rows[4]["psnr"] == ""
    md = paths["md"].read_text().splitlines()
    assert md[0] == "| cfg | temperature | status | psnr | ssim | lpips | niqe |"
    assert md[3] == "| 4 | 0.9 | completed | **21.5000** | 0.6000 | 0.3500 | **4.1000** |"
    assert md[4] == "| 6 | 0.7 | completed | 19.0000 | **0.6500** | **0.2500** | 4.6000 |"
    with Image.open(paths["png"]) as im:
        assert im.size[0] > 600 and np.asarray(im.convert("L")).std() > 5  # four panels, not blank


def test_single_swept_key_and_categorical_axis(tmp_path):
    for n, d in enumerate(["RealSR", "DRealSR"]):
        write_point(
            tmp_path / str(n),
            [f"sr_dir=/sets/{d}", "metrics=[niqe]"],
            "completed",
            {"mean": {"niqe": 4.0 + n}},
            job_num=n,
        )
    paths = summarize(tmp_path)
    rows = _rows(paths["csv"])
    assert [r["sr_dir"] for r in rows] == ["/sets/RealSR", "/sets/DRealSR"] and rows[0]["best"] == "niqe"
    assert paths["png"].is_file()


def test_point_metrics_accepts_the_job_return_shapes():
    assert point_metrics({"summary": {"images": 2}, "mean": {"psnr": 20.0}, "lower_better": []}) == ({"psnr": 20.0}, [])
    assert point_metrics({"mean": {"lpips": 0.2}, "lower_better": ["lpips"]}) == ({"lpips": 0.2}, ["lpips"])
    assert point_metrics(0.5) == ({"value": 0.5}, [])
    assert point_metrics(None) == ({}, [])


def _job_config(tmp_path, direction=None):
    hydra = {
        "mode": "RunMode.MULTIRUN",
        "runtime": {"output_dir": str(tmp_path / "job")},
        "job": {"num": 3},
        "sweep": {"dir": str(tmp_path)},
    }
    if direction:
        hydra["sweeper"] = {"direction": direction}
    return OmegaConf.create({"hydra": hydra})


def test_objective_becomes_the_job_return_value_and_direction_is_checked(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.status, ret.overrides = JobStatus.COMPLETED, ["cfg=2.5"]
    ret.return_value = {"mean": {"psnr": 23.25, "lpips": 0.125}, "lower_better": ["lpips"]}
    cb = SweepSummary(objective="lpips")
    cb.on_job_end(_job_config(tmp_path), ret)
    assert ret.return_value == 0.125  # what Optuna reads
    point = json.loads((tmp_path / "job" / "sweep_point.json").read_text())
    assert point["metrics"] == {"psnr": 23.25, "lpips": 0.125} and point["job_num"] == 3
    with pytest.raises(ValueError, match="minimize"):
        cb.on_multirun_start(_job_config(tmp_path, "maximize"))
    cb.on_multirun_start(_job_config(tmp_path, "minimize"))
    SweepSummary(objective="psnr").on_multirun_start(_job_config(tmp_path, "maximize"))


def test_callback_lifecycle_ignores_points_of_an_earlier_sweep_in_the_same_folder(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    write_point(tmp_path / "old", ["cfg=9"], "completed", {"mean": {"psnr": 99.0}}, sweep_id="earlier")
    cb = SweepSummary()
    cb.on_multirun_start(_job_config(tmp_path))
    for num, (cfg, psnr) in enumerate([(1, 20.0), (2, 22.0)]):
        conf = _job_config(tmp_path)
        conf.hydra.runtime.output_dir, conf.hydra.job.num = str(tmp_path / f"cfg={cfg}"), num
        ret = JobReturn()
        ret.status, ret.overrides, ret.return_value = JobStatus.COMPLETED, [f"cfg={cfg}"], {"mean": {"psnr": psnr}}
        cb.on_job_end(conf, ret)
    cb.on_multirun_end(_job_config(tmp_path))
    rows = _rows(tmp_path / "sweep_summary.csv")
    assert [(r["cfg"], r["psnr"], r["best"]) for r in rows] == [("1", "20.0", ""), ("2", "22.0", "psnr")]


def _tiny_pair(folder: Path, lr_side: int, hr_side: int) -> None:
    from common.data.bundled import bundled_pairs

    name, lr, hr = bundled_pairs(hr_side, scale=hr_side // lr_side)[1]
    for sub, img in (("LR", lr), ("HR", hr)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / sub / f"{name}.png")


def _psnr_y(a: Path, b: Path) -> float:
    """Y-channel PSNR (BT.601 studio range, data range 1) written out from the formula."""

    def y(p):
        x = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0
        return (16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0

    return float(10 * np.log10(1.0 / np.mean((y(a) - y(b)) ** 2)))


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "launch" / script),
        "-m",
        *args,
        "device=cpu",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _check_2x2(sweep: Path, hr: Path, grid: list[tuple[str, str]]) -> None:
    rows = _rows(sweep / "sweep_summary.csv")
    assert sorted((r["cfg"], r["temperature"]) for r in rows) == sorted(grid)
    assert all(r["status"] == "completed" for r in rows)
    for r in rows:  # each row's PSNR is its own job's output scored against HR
        job = sweep / r["job_dir"]
        assert f"cfg={r['cfg']}" in job.name and f"temperature={r['temperature']}" in job.name
        (sr,) = sorted((job / "sr").glob("*.png"))
        assert float(r["psnr"]) == pytest.approx(_psnr_y(sr, hr / sr.name), abs=1e-6)
    best = max(rows, key=lambda r: float(r["psnr"]))
    assert [r for r in rows if "psnr" in r["best"].split(";")] == [best]
    md = (sweep / "sweep_summary.md").read_text()
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == 5  # header + 4 rows
    assert f"**{float(best['psnr']):.4f}**" in md
    with Image.open(sweep / "sweep_summary.png") as im:
        assert np.asarray(im.convert("L")).std() > 5


@pytest.mark.slow
def test_varsr_2x2_sweep_writes_table_and_figure(tmp_path):
    _tiny_pair(tmp_path / "set", 24, 96)
    sweep = tmp_path / "sweep"
    _run(
        "sample_varsr.py",
        [
            "cfg=1.0,3.0",
            "temperature=0.5,1.0",
            "model=tiny",
            "ckpt=null",
            "vae_ckpt=null",
            f"lr_dir={tmp_path / 'set/LR'}",
            f"hr_dir={tmp_path / 'set/HR'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    _check_2x2(sweep, tmp_path / "set/HR", [("1.0", "0.5"), ("1.0", "1.0"), ("3.0", "0.5"), ("3.0", "1.0")])


PURE_TINY = [
    "model=tiny",
    "ckpt_dir=null",
    "vq_ckpt=null",
    "vq_size=tiny",
    "resolution=8",
    "image_only=true",
    "max_new_tokens=30",
    "out_size=32",
]


@pytest.mark.slow
def test_pure_2x2_sweep_writes_table_and_figure(tmp_path):
    _tiny_pair(tmp_path / "set", 8, 32)
    sweep = tmp_path / "sweep"
    _run(
        "sample_pure.py",
        [
            "cfg=0.8,1.0",
            "temperature=0.7,0.9",
            *PURE_TINY,
            f"lr_dir={tmp_path / 'set/LR'}",
            f"hr_dir={tmp_path / 'set/HR'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    _check_2x2(sweep, tmp_path / "set/HR", [("0.8", "0.7"), ("0.8", "0.9"), ("1.0", "0.7"), ("1.0", "0.9")])


@pytest.mark.slow
def test_evaluation_sweep_through_submitit_processes(tmp_path):
    """submitit's local launcher runs each job in its own process, as SLURM does: the table can
    only come from the files the jobs left in their folders."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _tiny_pair(tmp_path / "set", 8, 32)
    hr = tmp_path / "set/HR"
    (name,) = [p.name for p in hr.iterdir()]
    gt = np.asarray(Image.open(hr / name), dtype=np.int16)
    for i, noise in enumerate((4, 16)):  # two "methods": GT plus uniform noise of two amplitudes
        (tmp_path / f"m{i}").mkdir()
        rng = np.random.default_rng(i)
        out = np.clip(gt + rng.integers(-noise, noise + 1, gt.shape), 0, 255).astype(np.uint8)
        Image.fromarray(out).save(tmp_path / f"m{i}" / name)
    sweep = tmp_path / "sweep"
    _run(
        "evaluate.py",
        [
            f"sr_dir={tmp_path / 'm0'},{tmp_path / 'm1'}",
            f"hr_dir={hr}",
            "out=metrics.json",
            "metrics=[psnr,ssim]",
            "progress=false",
            f"hydra.sweep.dir={sweep}",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
        ],
        cwd=tmp_path,
    )
    assert any((sweep / ".submitit").iterdir())  # really went through submitit
    rows = _rows(sweep / "sweep_summary.csv")
    assert [Path(r["sr_dir"]).name for r in rows] == ["m0", "m1"]
    for r in rows:
        assert float(r["psnr"]) == pytest.approx(_psnr_y(Path(r["sr_dir"]) / name, hr / name), abs=1e-6)
    assert rows[0]["best"] == "psnr;ssim" and rows[1]["best"] == ""  # less noise wins both
    assert (sweep / "sweep_summary.png").is_file()


@pytest.mark.slow
def test_optuna_sweep_optimises_the_chosen_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    _tiny_pair(tmp_path / "set", 8, 32)
    sweep = tmp_path / "sweep"
    _run(
        "sample_pure.py",
        [
            "+sweep=optuna",
            "hydra.sweeper.n_trials=3",
            *PURE_TINY,
            f"lr_dir={tmp_path / 'set/LR'}",
            f"hr_dir={tmp_path / 'set/HR'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    rows = _rows(sweep / "sweep_summary.csv")
    assert len(rows) == 3 and {"cfg", "temperature"} <= set(rows[0])
    assert all(0.5 <= float(r["cfg"]) <= 2.0 and 0.5 <= float(r["temperature"]) <= 1.0 for r in rows)
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == pytest.approx(max(float(r["psnr"]) for r in rows))  # Optuna saw the PSNRs
