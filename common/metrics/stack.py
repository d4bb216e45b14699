"""One frozen metric stack for every table, and folder-vs-folder evaluation.

`MetricStack` scores batches; `evaluate_folders` scores an output folder against a GT folder
(paired by file name) and writes three files next to each other: a JSON summary (metric ->
mean, plus the pyiqa version and the exact metric variants), a per-image CSV and a Markdown
table row, so every baseline is re-scored with the same stack (common.md §3.2).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.data.io import DEFAULT_MAX_INPUT_PIXELS, read_image
from common.data.test_sets import PairingError, list_images_by_stem, pair_files
from common.metrics.fr import psnr_y, ssim_y
from common.metrics.learned import create_pyiqa_metric, pyiqa_version

OURS = {"psnr": psnr_y, "ssim": ssim_y}
FULL_REFERENCE = ("psnr", "ssim", "lpips", "dists")
FOLDER_LEVEL = ("fid",)  # a distance between two image sets, not a per-image score
LOWER_BETTER = ("lpips", "dists", "niqe", "fid")
PAPER_ORDER = (
    "psnr",
    "ssim",
    "lpips",
    "dists",
    "fid",
    "niqe",
    "musiq",
    "maniqa",
    "maniqa-pipal",
    "clipiqa",
    "topiq_nr",
)


class MetricStack:
    """Per-image metrics by name: ``psnr``/``ssim`` (ours, Y channel, float64) and pyiqa's
    ``lpips, dists, niqe, musiq, maniqa, maniqa-pipal, clipiqa, topiq_nr`` (any other pyiqa
    name also works). ``fid`` is set-level: `score` skips it, `folder_metric` / `evaluate_folders`
    compute it.

    Learned metrics are built at construction (so a missing weight file fails before any image
    is scored), from ``weights_dir`` or pyiqa's cache; see common.metrics.learned.
    """

    def __init__(self, names, device="cpu", weights_dir=None, crop_border: int = 0, metric_kwargs: dict | None = None):
        self.names = [str(n) for n in names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate metric names in {self.names}")
        self.device, self.weights_dir, self.crop_border = torch.device(device), weights_dir, int(crop_border)
        self.variants: dict[str, str] = {}
        self._learned: dict[str, torch.nn.Module] = {}
        kw = metric_kwargs or {}  # per-metric pyiqa options (non-default variants, e.g. fid dims); recorded
        for n in self.names:
            if n in OURS:
                self.variants[n] = f"ours: Y (BT.601 studio), float64, crop_border={self.crop_border}" + (
                    ", 11x11 gaussian sigma 1.5" if n == "ssim" else ""
                )
            else:
                self._learned[n], self.variants[n] = create_pyiqa_metric(n, self.device, weights_dir, **kw.get(n, {}))
                if kw.get(n):
                    self.variants[n] += f" with {kw[n]}"

    @property
    def per_image(self) -> list[str]:
        return [n for n in self.names if n not in FOLDER_LEVEL]

    @property
    def needs_hr(self) -> list[str]:
        return [
            n
            for n in self.names
            if n in FULL_REFERENCE
            or n in FOLDER_LEVEL
            or (n in self._learned and getattr(self._learned[n], "metric_mode", "NR") == "FR")
        ]

    def info(self) -> dict:
        return {
            "pyiqa_version": pyiqa_version(),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "crop_border": self.crop_border,
            "variants": dict(self.variants),
        }

    @torch.no_grad()
    def score(self, sr: torch.Tensor, hr: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{name: float64 Tensor(B)}`` for sr (B,3,H,W) in [0,1] (and hr of the same shape)."""
        if sr.dim() != 4:
            raise ValueError(f"sr must be (B,3,H,W), got {tuple(sr.shape)}")
        need = [n for n in self.needs_hr if n not in FOLDER_LEVEL]
        if hr is None and need:
            raise ValueError(f"metrics {need} need an HR reference")
        if hr is not None and hr.shape != sr.shape:
            raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape")
        out = {}
        x = sr.detach().clamp(0, 1)  # keep float64 inputs float64 for PSNR/SSIM
        for n in self.per_image:
            if n in OURS:
                out[n] = OURS[n](x, hr, self.crop_border)
                continue
            m = self._learned[n]
            xd = x.float().to(self.device)
            v = m(xd, hr.detach().float().clamp(0, 1).to(self.device)) if n in need else m(xd)
            out[n] = torch.as_tensor(v).detach().to("cpu", torch.float64).reshape(x.shape[0], -1)[:, 0]
        return out

    def folder_metric(self, name: str, sr_dir, hr_dir) -> float:
        """Set-level metric (``fid``) between two folders, computed by pyiqa (clean-fid mode)."""
        if name not in self._learned:
            raise ValueError(f"{name} is not in this MetricStack ({self.names})")
        # pyiqa moves the metric to its own device and passes it on; only loader options go here
        v = self._learned[name](str(sr_dir), str(hr_dir), num_workers=0, verbose=False)
        return float(v)


def _read_pair(name: str, sr_path: Path, hr_path: Path | None, max_pixels=DEFAULT_MAX_INPUT_PIXELS):
    sr = read_image(sr_path, max_pixels)
    hr = read_image(hr_path, max_pixels) if hr_path is not None else None
    if hr is not None and sr.shape != hr.shape:
        raise PairingError(
            f"{name}: size mismatch, sr {sr.shape[1]}x{sr.shape[0]} ({sr_path}) vs "
            f"hr {hr.shape[1]}x{hr.shape[0]} ({hr_path})"
        )
    # float64 straight from uint8: PSNR/SSIM then equal the uint8 computation to the last digit
    as64 = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).to(torch.float64)[None] / 255.0  # noqa: E731
    return as64(sr), (as64(hr) if hr is not None else None)


@contextlib.contextmanager
def _readable_only(sr_dir, hr_dir, pairs):
    """The folders a set-level metric reads: as given, or -- after skips -- temporary folders of
    links to the pairs that were read, so pyiqa's own loader never meets the unreadable files."""
    if pairs is None:
        yield sr_dir, hr_dir
        return
    with tempfile.TemporaryDirectory(prefix="arsr_eval_") as tmp:
        dirs = [Path(tmp, "sr"), Path(tmp, "hr") if hr_dir is not None else None]
        for d in filter(None, dirs):
            d.mkdir()
        for sr_path, hr_path in pairs:
            Path(dirs[0], Path(sr_path).name).symlink_to(Path(sr_path).resolve())
            if dirs[1] is not None:
                Path(dirs[1], Path(hr_path).name).symlink_to(Path(hr_path).resolve())
        yield dirs[0], dirs[1]


def _ordered(names):
    return sorted(names, key=lambda n: PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER))


def evaluate_folders(
    sr_dir,
    hr_dir,
    metrics,
    out_json,
    device="cpu",
    weights_dir=None,
    crop_border: int = 0,
    set_name: str | None = None,
    stack: MetricStack | None = None,
    show_progress: bool = True,
    allow_extra_hr: bool = False,
    overwrite: bool = True,
    max_input_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS,
    out_beside_images: bool = False,
) -> dict:
    """Score every image of ``sr_dir`` (against ``hr_dir`` when given) and write
    ``out_json`` (summary), ``<stem>_per_image.csv`` and ``<stem>.md`` (one Markdown row).

    Returns the summary dict. Missing/extra/mismatched files raise `PairingError` naming them
    (``allow_extra_hr``: GT files without an output are tolerated, for a sampling run that skipped
    unreadable inputs). An unreadable SR or HR file is skipped with a warning naming it and counted
    (``skipped`` / ``skipped_files`` in the summary); set-level metrics (FID) then read only the
    pairs that were read; ``max_input_pixels`` is the decoding gate's limit (`common.data.io`).
    The three files may not land in an input
    folder (``out_beside_images``: a sampling run scoring its own output folder keeps them there,
    next to the images it wrote, which are not inputs); existing ones are replaced (atomically) only
    with ``overwrite``.
    """
    from common.checkpoint import atomic_write_bytes
    from common.data.io import BadImageError
    from common.logging import progress
    from common.paths import SkipLog, UserError, check_apart

    out_json = Path(out_json)
    inputs = {"hr_dir": hr_dir} if out_beside_images else {"sr_dir": sr_dir, "hr_dir": hr_dir}
    check_apart(out_json.parent, "out", inputs, contains_ok=True)
    if out_json.exists() and not overwrite:
        raise UserError(f"out={out_json} already exists; set overwrite=true to replace it or choose another out")

    stack = stack or MetricStack(metrics, device=device, weights_dir=weights_dir, crop_border=crop_border)
    if hr_dir is None and stack.needs_hr:
        raise ValueError(f"metrics {stack.needs_hr} need hr_dir (full-reference); drop them or give hr_dir")
    if hr_dir is not None:
        pairs = pair_files(sr_dir, hr_dir, "sr_dir", "hr_dir", allow_extra_b=allow_extra_hr)
    else:
        found = list_images_by_stem(sr_dir, "sr_dir")
        from common.data.sources import natural_key

        pairs = [(s, found[s], None) for s in sorted(found, key=natural_key)]
    rows, read_ok, skips = [], [], SkipLog("evaluate")
    it = progress(pairs, desc=f"eval {set_name or Path(sr_dir).name}", disable=not show_progress)
    for name, sr_path, hr_path in it:
        try:
            sr, hr = _read_pair(name, sr_path, hr_path, max_input_pixels)
        except BadImageError as e:
            skips.skip(e.path, e.reason)
            continue
        scores = stack.score(sr, hr) if stack.per_image else {}
        rows.append({"name": name, **{k: float(v[0]) for k, v in scores.items()}})
        read_ok.append((sr_path, hr_path))
    counts = skips.finish(len(rows), gather=False)  # runs on one rank (rank 0 of a sampling run)
    means = {n: sum(r[n] for r in rows) / len(rows) for n in stack.per_image}
    for n in stack.names:
        if n in FOLDER_LEVEL:
            with _readable_only(sr_dir, hr_dir, read_ok if counts["skipped"] else None) as (sd, hd):
                means[n] = stack.folder_metric(n, sd, hd)
    means = {n: means[n] for n in _ordered(means)}

    # out_json is written last and marks the three files complete: an older one goes first, so a run
    # killed between the writes never leaves new per-image rows beside the previous run's summary.
    out_json.unlink(missing_ok=True)
    csv_path = out_json.with_name(out_json.stem + "_per_image.csv")
    md_path = out_json.with_suffix(".md")
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["name"] + [n for n in means if n in stack.per_image])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8", "surrogateescape"))
    from common.logging import markdown_table

    label = set_name or Path(sr_dir).name
    atomic_write_bytes(
        md_path, (markdown_table([{"set": label, "n": len(rows), **means}]) + "\n").encode("utf-8", "surrogateescape")
    )
    summary = {
        "set": label,
        "sr_dir": str(sr_dir),
        "hr_dir": str(hr_dir) if hr_dir else None,
        "n_images": len(rows),
        "mean": means,
        "lower_better": [n for n in means if n in LOWER_BETTER],
        "per_image_csv": str(csv_path),
        "markdown": str(md_path),
        "skipped": counts["skipped"],
        "skipped_files": counts["skipped_files"],
        **stack.info(),
    }
    atomic_write_bytes(out_json, json.dumps(summary, indent=2, allow_nan=True).encode())
    return summary
