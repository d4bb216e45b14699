"""Schema of `launch/evaluate.py` (folder evaluation) and of one entry of the `metrics` config group.

It lives in a package, not in the launch script, because Hydra's submitit (SLURM) launcher pickles
the job: a dataclass defined in ``__main__`` is pickled by value and arrives broken (its
``dataclasses.MISSING`` defaults and string annotations no longer resolve on the node).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import DEVICE, at_least, checks, one_of


@checks(better=one_of("higher", "lower"))
@dataclass
class MetricSpec:
    """One entry of the ``metrics`` group (configs/common/metrics/<name>.yaml)."""

    pyiqa: str = "ours"  # backend: pyiqa metric name, or "ours" (common.metrics.fr)
    variant: str = ""  # the pinned variant, as recorded in the result JSON
    better: str = "higher"  # higher | lower


@checks(device=DEVICE, crop_border=at_least(0), max_input_pixels=at_least(1))
@dataclass
class EvaluateConfig:
    """Folder evaluation."""

    sr_dir: str = "???"  # folder of outputs to score
    hr_dir: str | None = None  # GT folder with the same file names (None: no-reference metrics only)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)  # group selection: metric name -> spec
    out: str = "???"  # summary JSON path; <stem>_per_image.csv and <stem>.md are written beside it
    set_name: str | None = None  # label of the Markdown row (default: sr_dir's folder name)
    device: str = "auto"  # auto | cpu | cuda (learned metrics only)
    weights_dir: str | None = None  # local metric weights (layout: common/metrics/learned.py)
    crop_border: int = 0  # pixels cropped from each border for PSNR/SSIM (papers: 0)
    max_input_pixels: int | None = 67108864  # inputs declaring more px (file header) are skipped undecoded; null: none
    progress: bool = True  # show a progress bar
    overwrite: bool = True  # replace an existing `out` (and its CSV/MD) atomically; false: refuse


__all__ = ["EvaluateConfig", "MetricSpec"]
