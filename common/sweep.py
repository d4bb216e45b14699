"""Sweep summary: one table and one figure per Hydra multirun, for sampling and evaluation.

A Hydra multirun (``-m cfg=4,6,8 temperature=0.7,0.9``) leaves one folder per point. The
`SweepSummary` callback (registered in the sampling/evaluation configs under
``hydra.callbacks.sweep_summary``) turns them into an answer:

- ``on_job_end`` runs inside each job (also on a SLURM node under the submitit launcher) and
  writes ``sweep_point.json`` into the job's output folder: its overrides, status and the metric
  means the job returned (the summary dict of ``common.metrics.evaluate_folders``).
- ``on_multirun_end`` runs in the process that started the sweep once every job has finished
  (submitit's launcher waits for its jobs), reads those files back from disk -- never from
  memory, so it is the same code path for the local and the SLURM launcher -- and writes
  ``sweep_summary.csv``, ``sweep_summary.md`` (one row per point, the swept keys as columns, the
  best value of each metric marked, direction-aware) and ``sweep_summary.png`` (each metric
  against ``cfg`` with one line per ``temperature``, or against whichever key was swept) into the
  sweep folder.

With ``objective=<metric>`` (set by the ``+sweep=optuna`` presets) the callback also makes
the job's return value that metric's mean, which is what Hydra's Optuna sweeper optimises.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

POINT_FILE = "sweep_point.json"
SUMMARY_STEM = "sweep_summary"

log = logging.getLogger(__name__)


def _lower_better() -> set[str]:
    from common.metrics.stack import LOWER_BETTER  # lazy: the callback is built for every run

    return set(LOWER_BETTER)


def point_metrics(result: Any) -> tuple[dict[str, float], list[str]]:
    """``({metric: mean}, [lower-better metric names])`` from what a job returned.

    Accepts the summary of ``evaluate_folders`` (``{"mean": {...}, "lower_better": [...]}``, also
    nested in PURE's ``{"summary": ..., "mean": ...}``), a flat ``{name: number}`` dict, or a number.
    """
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return {"value": float(result)}, []
    if not isinstance(result, dict):
        return {}, []
    means = result.get("mean") if isinstance(result.get("mean"), dict) else result
    metrics = {str(k): float(v) for k, v in means.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lower = [str(n) for n in result.get("lower_better", []) if str(n) in metrics]
    return metrics, lower


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["cfg=4", "+exp=quick"] -> {"cfg": "4", "exp": "quick"}`` (Hydra's ``+``/``++``/``~`` prefixes dropped)."""
    out = {}
    for o in overrides:
        key, _, value = str(o).partition("=")
        out[key.lstrip("+~")] = value
    return out


def write_point(
    job_dir: str | Path, overrides: list[str], status: str, result: Any, job_num: int = 0, sweep_id: str | None = None
) -> Path:
    """Write one point's record (``sweep_point.json``) into its job folder, atomically."""
    from common.checkpoint import atomic_write_bytes

    metrics, lower = point_metrics(result) if status == "completed" else ({}, [])
    record = {
        "job_num": int(job_num),
        "overrides": [str(o) for o in overrides],
        "status": status,
        "metrics": metrics,
        "lower_better": lower,
        "sweep_id": sweep_id,
    }
    path = Path(job_dir) / POINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record, indent=1, allow_nan=True).encode())
    return path


def collect_points(sweep_dir: str | Path, sweep_id: str | None = None) -> list[dict]:
    """Every ``sweep_point.json`` under ``sweep_dir`` (any sub-folder depth), in job order; with
    ``sweep_id`` only that sweep's (a sweep folder reused by a later sweep keeps older points)."""
    points = []
    for path in Path(sweep_dir).rglob(POINT_FILE):
        point = json.loads(path.read_text())
        if sweep_id is not None and point.get("sweep_id") != sweep_id:
            continue
        point["job_dir"] = str(path.parent.relative_to(sweep_dir))  # where the point's outputs are
        points.append(point)
    return sorted(points, key=lambda p: p.get("job_num", 0))


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ordered_metrics(points: list[dict]) -> list[str]:
    from common.metrics.stack import PAPER_ORDER

    names = {m for p in points for m in p["metrics"]}
    return [m for m in PAPER_ORDER if m in names] + sorted(names - set(PAPER_ORDER))


def swept_keys(points: list[dict]) -> list[str]:
    """Override keys whose value differs between points (all keys when there is a single point)."""
    parsed = [parse_overrides(p["overrides"]) for p in points]
    keys = list(dict.fromkeys(k for d in parsed for k in d))
    varying = [k for k in keys if len({d.get(k) for d in parsed}) > 1]
    return varying or keys


def best_values(points: list[dict], metrics: list[str]) -> dict[str, float]:
    """Best mean per metric over the points that have it: max, or min for lower-better metrics."""
    lower = _lower_better() | {m for p in points for m in p.get("lower_better", [])}
    best = {}
    for m in metrics:
        vals = [p["metrics"][m] for p in points if m in p["metrics"] and not math.isnan(p["metrics"][m])]
        if vals:
            best[m] = min(vals) if m in lower else max(vals)
    return best


def summarize(sweep_dir: str | Path, figure: bool = True, sweep_id: str | None = None) -> dict[str, Path]:
    """Write the sweep's table (CSV + Markdown) and figure; returns their paths (empty if no points)."""
    from common.checkpoint import atomic_write_bytes
    from common.logging import markdown_table

    sweep_dir = Path(sweep_dir)
    points = collect_points(sweep_dir, sweep_id)
    if not points:
        return {}
    keys, metrics = swept_keys(points), _ordered_metrics(points)
    best = best_values(points, metrics)
    rows, md_rows = [], []
    for p in points:
        params = parse_overrides(p["overrides"])
        is_best = [m for m in metrics if m in best and p["metrics"].get(m) == best[m]]
        rows.append(
            {
                **{k: params.get(k, "") for k in keys},
                "status": p["status"],
                **{m: p["metrics"].get(m, "") for m in metrics},
                "best": ";".join(is_best),
                "job_dir": p["job_dir"],
            }
        )
        md_rows.append(
            {
                **{k: params.get(k, "") for k in keys},
                "status": p["status"],
                **{m: _md_cell(p["metrics"].get(m), m in is_best) for m in metrics},
            }
        )
    paths = {"csv": sweep_dir / f"{SUMMARY_STEM}.csv", "md": sweep_dir / f"{SUMMARY_STEM}.md"}
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(paths["csv"], buf.getvalue().encode("utf-8", "surrogateescape"))
    lower = _lower_better()
    legend = ", ".join(f"{m} {'lower' if m in lower else 'higher'} is better" for m in metrics)
    text = f"{markdown_table(md_rows)}\n\nBest value per metric in bold ({legend}).\n"
    atomic_write_bytes(paths["md"], text.encode("utf-8", "surrogateescape"))
    if figure and metrics:
        paths["png"] = sweep_dir / f"{SUMMARY_STEM}.png"
        plot_sweep(points, keys, metrics, paths["png"])
    return paths


def _md_cell(value, best: bool) -> str:
    if value is None:
        return ""
    text = f"{value:.4f}"
    return f"**{text}**" if best else text


def plot_sweep(points: list[dict], keys: list[str], metrics: list[str], out: Path) -> None:
    """One panel per metric: x = ``cfg`` (else the first numeric swept key), one line per value of
    the other swept keys (``temperature`` for a cfg x temperature sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parsed = [parse_overrides(p["overrides"]) for p in points]
    numeric = [k for k in keys if all(_as_number(d.get(k)) is not None for d in parsed)]
    x_key = "cfg" if "cfg" in numeric else (numeric[0] if numeric else keys[0])
    others = [k for k in keys if k != x_key]
    categories = list(dict.fromkeys(d.get(x_key, "") for d in parsed))

    def x_of(d):
        return _as_number(d.get(x_key)) if x_key in numeric else categories.index(d.get(x_key, ""))

    groups: dict[str, list[tuple[float, dict]]] = {}
    for d, p in zip(parsed, points, strict=True):
        label = ", ".join(f"{k}={d.get(k, '')}" for k in others) or x_key
        groups.setdefault(label, []).append((x_of(d), p))
    cols = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    lower = _lower_better()
    for ax, m in zip(axes.flat, metrics, strict=False):  # spare panels are hidden below
        for label, pts in groups.items():
            xy = sorted((x, p["metrics"][m]) for x, p in pts if m in p["metrics"])
            if xy:
                ax.plot([a for a, _ in xy], [b for _, b in xy], marker="o", label=label)
        ax.set_xlabel(x_key)
        ax.set_title(f"{m} ({'lower' if m in lower else 'higher'} is better)")
        if x_key not in numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # atomic: a reader never sees a half-written figure


def _is_multirun(config: DictConfig) -> bool:
    return str(config.hydra.mode) == "RunMode.MULTIRUN"


class SweepSummary(Callback):
    """Hydra callback: per-job ``sweep_point.json`` files, then the sweep's table and figure.

    ``objective``: a metric name; each job then returns that metric's mean (Optuna's objective).
    ``figure``: also draw ``sweep_summary.png``.
    """

    def __init__(self, objective: str | None = None, figure: bool = True) -> None:
        self.objective = objective
        self.figure = figure
        self.sweep_id: str | None = None  # set before the launcher pickles this object into its jobs

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_id = f"{time.time_ns()}-{os.getpid()}"
        direction = config.hydra.sweeper.get("direction") if "sweeper" in config.hydra else None
        if self.objective and isinstance(direction, str):
            want = "minimize" if self.objective in _lower_better() else "maximize"
            if direction != want:
                raise ValueError(
                    f"sweep objective {self.objective} should be {want}d, but "
                    f"hydra.sweeper.direction={direction}; set hydra.sweeper.direction={want}"
                )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        from hydra.core.utils import JobStatus

        ok = job_return.status == JobStatus.COMPLETED
        result = job_return.return_value if ok else None
        write_point(
            config.hydra.runtime.output_dir,
            job_return.overrides,
            "completed" if ok else "failed",
            result,
            job_num=config.hydra.job.get("num", 0),
            sweep_id=self.sweep_id,
        )
        if ok and self.objective:
            metrics, _ = point_metrics(result)
            if self.objective not in metrics:
                log.warning("sweep objective %s not among this job's metrics %s", self.objective, sorted(metrics))
            job_return.return_value = metrics.get(self.objective, float("nan"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        paths = summarize(config.hydra.sweep.dir, figure=self.figure, sweep_id=self.sweep_id)
        if paths:
            log.info("sweep summary: %s", ", ".join(str(p) for p in paths.values()))
            print((paths["md"]).read_text())


__all__ = [
    "POINT_FILE",
    "SweepSummary",
    "best_values",
    "collect_points",
    "parse_overrides",
    "plot_sweep",
    "point_metrics",
    "summarize",
    "swept_keys",
    "write_point",
]
