"""Folder-tool safety shared by degradation, sampling (both apps) and evaluation.

Three promises every folder tool makes, implemented once here:

- Inputs are never overwritten: `prepare_output_dir` refuses an output folder that is, contains
  or is inside an input folder, comparing resolved real paths (so a symlink or ``..`` cannot
  sneak an output into an input), before anything is written or any model is loaded.
- Hydra's sweep folder (``-m``: ``multirun.yaml``, job folders, the sweep summary) is checked
  against the same inputs (`check_sweep_dir`, called by ``common.config.run_app`` before Hydra
  writes anything).
- Old results are never passed off as new: `check_settings` records the settings that shape the
  outputs in ``<out_dir>/run_settings.json`` and refuses to keep (resume over) outputs that were
  made with other settings unless ``overwrite=true`` redoes them.
- Bad paths are one line: `require_dir` / `require_file` tell "does not exist" from "is a file,
  not a folder" (and the reverse), naming the config key to change.
- A folder run finishes: `SkipLog` reads each image through the one decoding gate
  (`common.data.io.read_image`, whose pixel limit ``max_input_pixels`` is checked from the file
  header), warns once per file it cannot use (unreadable, over that limit, or `ImageRejected` by
  an output-size limit), naming it, counts, and turns the count into the exit code.

Exit codes (README "Bad input"): 0 all done; 2 user error (one line on stderr: the run did not
start, or no input at all could be processed); 3 done with skips (every usable image processed,
the others named in the log and counted in the final line).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_SKIPPED = 3
# the config keys that name input folders in the folder tools (degrade, sampling, evaluation)
INPUT_KEYS = ("lr_dir", "hr_dir", "sr_dir")


class UserError(Exception):
    """A problem the user fixes by changing a path or a config value; the message is one line.

    `common.config.one_line_errors` prints it without a traceback and exits with code 2.
    """


class ImageRejected(UserError, ValueError):
    """One input image cannot be processed as configured (below the minimum size, over the pixel
    limit): a single-image call fails with this one line; a folder run skips and counts the image."""


class OutputOverlapError(UserError):
    """The output folder is, contains or is inside an input folder."""


def _real(path) -> Path:
    # resolve() follows every symlink that exists and keeps the not-yet-created tail as written
    return Path(os.path.expanduser(str(path))).resolve()


def require_dir(path, key: str) -> Path:
    """``path`` as a Path when it is an existing folder; otherwise a one-line error naming ``key``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise FileNotFoundError(f"{key}={path} does not exist; give an existing folder")
    if not p.is_dir():
        raise NotADirectoryError(f"{key}={path} is a file, not a folder; give the folder that holds the images")
    return p


def require_file(path, key: str) -> Path:
    """``path`` as a Path when it is an existing file; otherwise a one-line error naming ``key``."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise FileNotFoundError(f"{key}={path} does not exist; give the path of an existing file")
    if p.is_dir():
        raise IsADirectoryError(f"{key}={path} is a folder, not a file; give the file inside it")
    return p


def check_apart(out, out_key: str, inputs: Mapping[str, object], contains_ok: bool = False) -> None:
    """Refuse an output folder that is, contains or is inside any of ``inputs`` ({key: path|None}).

    ``contains_ok``: the caller writes only a few named files directly into ``out`` (a metrics
    JSON beside the SR folder), so ``out`` may be a parent of an input, never the input or inside it.
    """
    o = _real(out)
    for key, inp in inputs.items():
        if inp is None:
            continue
        i = _real(inp)
        if o == i or i in o.parents or (o in i.parents and not contains_ok):
            how = "is" if o == i else ("is inside" if i in o.parents else "contains")
            raise OutputOverlapError(
                f"{out_key}={out} {how} the input folder {key}={inp} (real paths {o} and {i}); outputs must "
                f"never overwrite inputs: choose an {out_key} outside {key}"
            )


def check_sweep_dir(sweep_dir, inputs: Mapping[str, object]) -> None:
    """Refuse a ``hydra.sweep.dir`` that is or lies inside an input folder ({key: path}); it may
    contain one (a sweep over the outputs of an earlier sweep scores folders inside its own)."""
    check_apart(sweep_dir, "hydra.sweep.dir", inputs, contains_ok=True)


def prepare_output_dir(out, out_key: str, inputs: Mapping[str, object]) -> Path:
    """Check ``out`` against ``inputs`` (see `check_apart`), then create it and make sure it is writable."""
    check_apart(out, out_key, inputs)
    p = Path(os.path.expanduser(str(out)))
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{out_key}={out} is a file, not a folder; give a folder for the outputs")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise NotADirectoryError(f"{out_key}={out}: a parent of it is a file; give a folder for the outputs") from None
    except OSError as e:  # read-only file system, permission denied, /proc ...
        raise PermissionError(
            f"{out_key}={out} cannot be created ({e.strerror or type(e).__name__}); choose a writable folder"
        ) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(f"{out_key}={out} is not writable; choose a writable folder")
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 speaks for the job (no process group yet)
        from common.run_lock import LOCK_NAME, acquire

        _FOLDER_LOCKS.append(acquire(p / LOCK_NAME, f"a folder run writing {out_key}"))  # until SkipLog.finish
    return p


_FOLDER_LOCKS: list = []  # out_dir locks of the folder run in progress (common.run_lock), freed by SkipLog.finish


def release_folder_locks() -> None:
    """Free the out_dir locks of this process's folder run: at its end, or when it is refused."""
    from common.run_lock import release

    while _FOLDER_LOCKS:
        release(_FOLDER_LOCKS.pop())


def check_existing(
    out_dir: Path, outputs: Mapping[str, list[str]], out_key: str, skip_existing: bool, overwrite: bool
) -> set[str]:
    """Names (keys of ``outputs``: name -> its output file names in ``out_dir``) already done.

    ``skip_existing`` keeps outputs that are complete (resume); ``overwrite`` replaces them
    (atomically, as every writer here writes to a temp name and renames) and wins over
    ``skip_existing``, which sampling turns on by default, so ``overwrite=true`` alone redoes
    a folder instead of silently keeping its old results; with neither, existing
    outputs are a one-line error before any work starts, so a second run never silently replaces
    the first run's results. Returns the names to skip.
    """
    existing = sorted(f for files in outputs.values() for f in files if (out_dir / f).exists())
    if existing and not (skip_existing or overwrite):
        few = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise UserError(
            f"{out_key}={out_dir} already holds {len(existing)} output(s) ({few}); set "
            "skip_existing=true to keep them or overwrite=true to replace them"
        )
    if overwrite or not skip_existing:
        return set()
    return {n for n, files in outputs.items() if all((out_dir / f).exists() for f in files)}


SETTINGS_FILE = "run_settings.json"
# keys that never change what an output file holds: where things go, resume switches, scoring, limits
NOT_OUTPUT_KEYS = frozenset(
    {"out_dir", "metrics", "metrics_out", "skip_existing", "overwrite", "device", "progress"}
    | {"max_input_pixels", "max_output_pixels", "limit", "min_size"}
)


def output_settings(cfg, ignore: frozenset[str] = frozenset()) -> dict:
    """The keys of a dataclass config that shape its outputs (JSON values; folders and weight files
    as real paths, so ``./x`` and ``/abs/x`` are the same setting)."""
    import dataclasses
    import json

    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        if k in NOT_OUTPUT_KEYS or k in ignore:
            continue
        if isinstance(v, str) and (k.endswith(("_dir", "ckpt")) or k == "tokenizer"):
            v = str(_real(v))
        out[k] = json.loads(json.dumps(v, default=str))
    return out


def check_settings(out_dir: Path, settings: dict, kept: int, overwrite: bool, log=None) -> None:
    """Record ``settings`` in ``out_dir``; refuse to keep ``kept`` outputs made with other settings.

    A resumed run (``skip_existing``) keeps the outputs already there and then scores the folder as
    its own, so outputs of a run with another ``cfg`` or checkpoint would be reported as this
    run's: that is a one-line error naming the changed keys (``overwrite=true`` redoes them). Outputs
    with no record (an older version) are kept with a warning."""
    import json

    from common.checkpoint import atomic_write_bytes

    path = Path(out_dir) / SETTINGS_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        old = None
    if kept and not overwrite:
        if old is None and log is not None:
            log.warning(
                "%s holds %d output(s) of an unrecorded run; kept as they are (overwrite=true redoes them)",
                out_dir,
                kept,
            )
        elif old is not None and old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            diff = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
            raise UserError(
                f"out_dir={out_dir} holds {kept} output(s) made with other settings ({diff}"
                f"{' ...' if len(changed) > 3 else ''}); set overwrite=true to redo them with the new settings "
                "or choose another out_dir"
            )
    atomic_write_bytes(path, json.dumps(settings, indent=1, sort_keys=True).encode())


def start_folder_run(
    cfg, default_out, weights: Mapping[str, object], outputs, ignore: frozenset[str] = frozenset(), skips=None
) -> tuple[dict, Path, set[str]]:
    """Checks every sampling run makes before a model loads; ``(files by stem, out_dir, names done)``.

    ``cfg`` has ``lr_dir``, ``hr_dir``, ``out_dir``, ``metrics_out``, ``skip_existing`` and
    ``overwrite``; ``weights`` ({key: path or None}) must exist; ``outputs(name)`` lists the files
    one input gives in ``out_dir``; outputs kept for a resume must come from the same settings
    (`check_settings`; ``ignore``: more keys that do not change an output). With ``skips`` (the
    run's `SkipLog`), a second input of the same name (``a.jpg`` beside ``a.png``) is skipped and
    counted instead of refusing the folder.
    """
    from common.data.test_sets import list_images_by_stem

    files = list_images_by_stem(cfg.lr_dir, "lr_dir", skips.skip if skips is not None else None)
    if cfg.hr_dir is not None:
        require_dir(cfg.hr_dir, "hr_dir")
    for key, path in weights.items():  # file or folder: the loaders check which, naming the file
        if path and not Path(os.path.expanduser(str(path))).exists():
            raise FileNotFoundError(f"{key}={path} does not exist; put the weights there or set {key}= to their path")
    inputs = {"lr_dir": cfg.lr_dir, "hr_dir": cfg.hr_dir}
    if cfg.metrics_out:
        check_apart(Path(cfg.metrics_out).parent, "metrics_out", inputs, contains_ok=True)
    out_dir = prepare_output_dir(cfg.out_dir or default_out, "out_dir", inputs)
    from common.logging import get_logger

    try:  # a refused run leaves the folder as it found it, lock included
        done = check_existing(out_dir, {n: outputs(n) for n in files}, "out_dir", cfg.skip_existing, cfg.overwrite)
        # hr_dir: the reference the outputs are scored against, not what they are made from
        settings = output_settings(cfg, ignore | {"hr_dir"})
        check_settings(out_dir, settings, len(done), cfg.overwrite, get_logger("folder"))
    except BaseException:
        release_folder_locks()
        raise
    return files, out_dir, done


class SkipLog:
    """Skip-and-count for a folder run: each unreadable input is one warning line naming the file.

    ``read(path)`` returns the uint8 image or None (skipped); ``max_pixels`` is the tool's
    ``max_input_pixels`` (None: no limit; default `common.data.io.DEFAULT_MAX_INPUT_PIXELS`).
    ``finish(done)`` logs the final count,
    raises a one-line `UserError` when nothing at all was readable, and returns the counts that
    `exit_code` turns into 0 or 3. Under torchrun, ``finish`` sums the counts over ranks.
    """

    def __init__(self, what: str, logger=None, max_pixels: int | None | str = "default"):
        from common.data.io import DEFAULT_MAX_INPUT_PIXELS
        from common.logging import get_logger

        self.what, self.log = what, logger or get_logger(what)
        self.max_pixels = DEFAULT_MAX_INPUT_PIXELS if max_pixels == "default" else max_pixels
        self.skipped: list[str] = []
        self.reasons: list[str] = []

    def skip(self, path, reason: str) -> None:
        self.skipped.append(str(path))
        self.reasons.append(f"{path}: {reason}")
        self.log.warning("skipped %s: %s", path, reason)

    def read(self, path):
        from common.data.io import BadImageError, read_image

        try:
            return read_image(path, self.max_pixels)
        except BadImageError as e:
            self.skip(path, e.reason)
            return None

    def finish(self, done: int, extra: str = "", gather: bool = True) -> dict:
        """Counts over all ranks (a collective: every rank calls it, unless ``gather=False``)."""
        from common.dist import all_gather_object

        mine = (done, self.skipped, self.reasons[:1])
        per_rank = all_gather_object(mine) if gather else [mine]
        done = sum(d for d, _, _ in per_rank)
        release_folder_locks()  # the folder run is over (done or refused below): another run may use out_dir now
        skipped = sorted({s for _, ss, _ in per_rank for s in ss})  # listing skips: seen by every rank
        if skipped and not done:
            first = next(r for _, _, rs in per_rank for r in rs)
            raise UserError(
                f"{self.what}: none of the {len(skipped)} input file(s) could be processed (first: {first})"
            )
        self.log.info("%s: %d done, %d skipped%s", self.what, done, len(skipped), extra)
        return {"done": done, "skipped": len(skipped), "skipped_files": skipped}


def read_back_limit(cfg) -> int | None:
    """Pixel limit for scoring a sampling run's own outputs (as large as ``max_output_pixels`` allows)
    and its HR references (``max_input_pixels``): the larger of the two, None when either is unlimited."""
    limits = (cfg.max_input_pixels, cfg.max_output_pixels)
    return None if None in limits else max(limits)


def exit_code(result) -> int:
    """0 when a folder run processed everything, 3 (`EXIT_SKIPPED`) when it skipped some inputs."""
    return EXIT_SKIPPED if isinstance(result, Mapping) and result.get("skipped") else EXIT_OK


def sampling_out_dir(out_dir, hydra_cfg, world_size: int = 1) -> str:
    """The output folder of a sampling run: ``out_dir``, or ``<Hydra run dir>/sr`` when unset.

    In a sweep (``-m``) the default is the job's own folder, and an explicit ``out_dir`` gets one
    sub-folder per job (``cfg=0.8,temperature=0.7/sr``) so sweep points never overwrite each
    other. Under torchrun every rank would invent its own time-stamped default, so ``out_dir`` is
    required there.
    """
    multirun = hydra_cfg is not None and str(hydra_cfg.get("mode")) == "RunMode.MULTIRUN"
    if out_dir is not None:
        if not multirun:
            return str(out_dir)
        job = hydra_cfg.job
        return str(Path(out_dir) / (job.get("override_dirname") or f"job{job.get('num')}") / "sr")
    if world_size > 1:
        raise UserError("under torchrun give out_dir=... so every rank writes to the same folder")
    if hydra_cfg is None:
        return "sr"
    base = hydra_cfg.runtime.get("output_dir") if multirun else None
    return str(Path(base or hydra_cfg.run.dir) / "sr")


__all__ = [
    "EXIT_OK",
    "EXIT_SKIPPED",
    "EXIT_USER_ERROR",
    "INPUT_KEYS",
    "ImageRejected",
    "OutputOverlapError",
    "SkipLog",
    "UserError",
    "check_apart",
    "check_existing",
    "check_settings",
    "check_sweep_dir",
    "exit_code",
    "output_settings",
    "prepare_output_dir",
    "release_folder_locks",
    "read_back_limit",
    "require_dir",
    "require_file",
    "sampling_out_dir",
    "start_folder_run",
]
