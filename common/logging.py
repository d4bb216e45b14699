"""Rank-aware logging, progress bars, wandb tracking (offline by default), image grids and tables.

Only rank 0 prints INFO, shows progress bars and talks to wandb; other ranks stay quiet unless
something is wrong. Tables are written as JSON + CSV + Markdown so a paper can paste them.
"""

from __future__ import annotations

import csv
import json
import logging as _logging
import os
import sys
from pathlib import Path

import torch

from common.dist import get_rank


class _RankFilter(_logging.Filter):
    """Stamp each record with the rank at emit time (loggers are often made before init_process_group)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        record.rank = get_rank()
        return True


class _StdoutHandler(_logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, not the stream seen when the logger was
    made (pytest's capture and notebooks swap it; a stale one is closed and every record fails)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the live sys.stdout always wins
        pass


def get_logger(name: str = "arsr") -> _logging.Logger:
    logger = _logging.getLogger(name)
    if not logger.handlers:
        h = _StdoutHandler()
        h.addFilter(_RankFilter())
        h.setFormatter(_logging.Formatter("[%(asctime)s r%(rank)s %(name)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
        logger.propagate = False
    # Re-evaluated on every call so a logger created before the process group still quiets ranks > 0.
    logger.setLevel(_logging.INFO if get_rank() == 0 else _logging.WARNING)
    return logger


def progress(iterable=None, **kwargs):
    """tqdm on rank 0, a silent pass-through elsewhere (and when ARSR_NO_PROGRESS is set)."""
    from tqdm.auto import tqdm

    disable = get_rank() != 0 or bool(os.environ.get("ARSR_NO_PROGRESS"))
    return tqdm(iterable, disable=kwargs.pop("disable", False) or disable, dynamic_ncols=True, **kwargs)


class Tracker:
    """Thin wandb wrapper; ``mode`` is ``offline`` (default), ``online`` or ``disabled``.

    Scalars are also appended to ``<run_dir>/metrics.jsonl`` so a run is inspectable without wandb.
    """

    def __init__(
        self, project: str, run_dir, config: dict | None = None, mode: str = "offline", name: str | None = None
    ):
        self.run_dir = Path(run_dir)
        self.active = get_rank() == 0
        self._wandb = None
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        if mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self._wandb = wandb.init(
                    project=project,
                    dir=str(self.run_dir),
                    config=config or {},
                    mode=mode,
                    name=name or self.run_dir.name,
                    resume="allow",
                    id=_stable_run_id(self.run_dir),
                )
            except Exception as e:  # tracking must never kill a training run
                get_logger().warning(f"wandb disabled ({type(e).__name__}: {e})")

    def log(self, metrics: dict, step: int) -> None:
        if not self.active:
            return
        row = {k: _to_py(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=int(step))

    def log_image(self, key: str, image, step: int) -> None:
        if not self.active or self._wandb is None:
            return
        import wandb

        img = str(image) if isinstance(image, (str, Path)) else _to_uint8_hwc(image)
        self._wandb.log({key: wandb.Image(img)}, step=int(step))

    def finish(self) -> None:
        if not self.active:
            return
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def _stable_run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _to_py(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", None) == 0 else v  # numpy scalars


def _to_uint8_hwc(img):
    import numpy as np  # lazily: tables and logging work on a bare torch install (bench/gpu.py)

    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        return (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return np.asarray(img)


def save_image_grid(rows, path, labels: list[str] | None = None, pad: int = 4) -> Path:
    """Save a grid: each row is a list of (3,H,W) tensors in [0,1] (e.g. LR | SR | HR).

    Images in a row are resized to the row's largest height so mixed resolutions line up;
    ``labels`` name the columns and are drawn above the first row.
    """
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    tiles = []
    for row in rows:
        h = max(int(t.shape[-2]) for t in row)
        resized = []
        for t in row:
            t = t.detach().float().cpu().clamp(0, 1)
            if t.shape[-2] != h:
                w = round(t.shape[-1] * h / t.shape[-2])
                t = F.interpolate(t[None], size=(h, w), mode="nearest")[0]
            resized.append(t)
        tiles.append(resized)
    width = max(sum(t.shape[-1] for t in r) + pad * (len(r) + 1) for r in tiles)
    header = 16 if labels else 0
    height = sum(r[0].shape[-2] for r in tiles) + pad * (len(tiles) + 1) + header
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    y = pad + header
    for r in tiles:
        x = pad
        for t in r:
            canvas.paste(Image.fromarray(_to_uint8_hwc(t)), (x, y))
            x += t.shape[-1] + pad
        y += r[0].shape[-2] + pad
    if labels:
        draw = ImageDraw.Draw(canvas)
        x = pad
        for lab, t in zip(labels, tiles[0]):
            draw.text((x + 2, 2), str(lab), fill=(0, 0, 0))
            x += t.shape[-1] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """GitHub Markdown table over the union of keys (in first-seen order)."""
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def report_table(rows: list[dict], path_stem=None, title: str | None = None) -> list[dict]:
    """Print ``rows`` as a Markdown table (under ``title``) and, with a stem, write them too."""
    print("\n".join(filter(None, [title, markdown_table(rows)])))
    if path_stem:
        write_table(rows, path_stem)
    return rows


def write_table(rows: list[dict], path_stem) -> dict[str, Path]:
    """Write ``rows`` to ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md``; returns the paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: _to_py(v) for k, v in r.items()} for r in rows]
    out = {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md")}
    out["json"].write_text(json.dumps(rows, indent=2))
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(out["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    out["md"].write_text(markdown_table(rows) + "\n")
    return out


def plot_curves(series: dict[str, tuple[str | Path, list[str]]], path) -> Path:
    """One panel per run: the chosen scalar keys of a ``metrics.jsonl`` against the step.

    ``series`` maps a panel title to (metrics.jsonl path, [keys]); missing keys are skipped, so the
    same call works for runs that log different scalars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.2), squeeze=False)
    for ax, (title, (jsonl, keys)) in zip(axes[0], series.items()):
        rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
