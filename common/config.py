"""Hydra plumbing shared by every app, and the config pieces every training run has.

Config tree: each app's primary configs live in ``configs/<app>/`` (``varsr``, ``pure``, ``common``)
and the shared groups in ``configs/common/`` (``degradation/``, ``data/``, ``metrics/``). A Hydra
search-path plugin registered here puts ``configs/common`` on the search path of every app, so
``degradation=realesrgan`` works on any launcher without copying YAML between apps.

YAML files hold values; dataclasses (structured configs) hold the schema and the documentation of
every key. ``validate(schema, cfg)`` merges a composed config into its schema so a typo or a
wrong type is a one-line error at start-up rather than a crash hours into a run. Value rules
(`checks`: ranges and choices per key; `relations`: rules between keys, e.g. an overlap smaller
than its tile) live next to the documented keys and are applied by the same `validate`, which both
the command line and the web demo go through; every float must be finite (no NaN or inf); the
rule machinery is `common.config_rules`, re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.config_rules import (  # noqa: F401  (the schemas import the rules from here)
    DEVICE,
    FINITE,
    PROBABILITY,
    RANGE,
    SEED,
    Relation,
    Rule,
    above,
    at_least,
    between,
    check_values,
    checks,
    is_number,
    one_of,
    relations,
    square_within,
)
from common.paths import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ROOT = REPO_ROOT / "configs"
APPS = ("varsr", "pure", "common")


def _register_search_path() -> None:
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class ArsrCommonSearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            search_path.append(provider="arsr-common", path=f"file://{CONFIG_ROOT / 'common'}")

    Plugins.instance().register(ArsrCommonSearchPath)


_register_search_path()


def repo_path(path: str) -> str:
    """The ``${repo:...}`` resolver: a path written in a config file, relative to the repository.

    Config files name repository files (data configs, DeepSpeed JSONs) and default output folders
    by relative paths; written as ``${repo:configs/pure/data/lsdir_ffhq.yaml}`` they mean the same
    file whatever directory a launcher is started from. Paths typed on the command line replace the
    whole value, so they keep the usual meaning (relative to the working directory).
    """
    p = Path(str(path)).expanduser()
    return str(p if p.is_absolute() else REPO_ROOT / p)


OmegaConf.register_new_resolver("repo", repo_path, replace=True)


def app_config_dir(app: str) -> str:
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}; expected one of {APPS}")
    return str(CONFIG_ROOT / app)


def compose_config(
    app: str, config_name: str = "train", overrides: list[str] | None = None, hydra_node: bool = False
) -> DictConfig:
    """Compose a config with Hydra's compose API (tests, and every rank under torchrun).

    ``hydra_node`` keeps Hydra's own ``hydra`` node (run dir, command-line overrides) in the result."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=app_config_dir(app), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=hydra_node)


def split_hydra(cfg: DictConfig) -> tuple[DictConfig, DictConfig]:
    """(the job's config, Hydra's own node) of a config composed with ``hydra_node=True``."""
    from omegaconf import open_dict

    with open_dict(cfg):
        hc = cfg.pop("hydra")
    return cfg, hc


def validate(schema: type, cfg: DictConfig | dict) -> Any:
    """Merge ``cfg`` into the dataclass ``schema``: unknown keys and wrong types raise at once.

    Returns the typed OmegaConf object (attribute access, defaults filled from the dataclass).
    ``hydra`` bookkeeping keys are dropped first.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, cfg)
    except Exception as e:  # omegaconf errors are multi-line; keep the useful first line and the key
        key = getattr(e, "full_key", None)
        raise ValueError(
            f"invalid {schema.__name__} config{f' key {key}' if key else ''}: {str(e).splitlines()[0]}"
        ) from None
    check_values(merged)
    return merged


def check_dataclass(obj) -> None:
    """Apply a schema's rules to a dataclass instance built or changed in code (the web demo's
    per-request settings), so no entry point accepts a value that the command line refuses."""
    validate(type(obj), dataclasses.asdict(obj))


def cli_keys(overrides) -> set[str]:
    """Dotted keys a list of Hydra command-line overrides sets (``a.b=1``, ``+a=1``, ``++a.b=2``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides or []))}


def apply_preset(values: dict, preset: dict, given: set[str], prefix: str = "") -> dict:
    """Fill ``values`` from an experiment's ``preset`` block without touching keys in ``given``.

    Code that reads a preset block (e.g. an experiment's ``sample:`` keys) runs after Hydra has
    applied the command line, so applied blindly it would replace what the user typed; the
    command line must always win, at any depth (``sjd.window=8`` beats ``sample.sjd.window``).
    """
    out = dict(values)
    for key, val in (preset or {}).items():
        full = f"{prefix}{key}"
        if full in given:
            continue
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = apply_preset(out[key], val, given, f"{full}.")
        else:
            out[key] = val
    return out


def to_dataclass(schema: type, cfg) -> Any:
    """A plain dataclass instance (nested dataclasses included) from a validated config."""
    return OmegaConf.to_object(validate(schema, cfg))


def dataclass_from_dict(schema: type, values: dict | None):
    """Build ``schema`` from a flat dict, ignoring keys the schema does not have (lenient readers)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return schema(**{k: v for k, v in (values or {}).items() if k in names})


@checks(device=DEVICE, wandb_mode=one_of("offline", "online", "disabled"), seed=SEED)
@dataclass
class RunConfig:
    """Where a run writes, how it is seeded and tracked."""

    run_dir: str = "runs/default"  # all outputs (checkpoints, logs, grids, metrics) go here
    seed: int = 0  # global seed; ranks derive distinct streams from it
    wandb_mode: str = "offline"  # offline (default) | online | disabled
    wandb_project: str = "arsr"  # wandb project name
    device: str = "auto"  # auto (cuda if available) | cpu | cuda


@checks(every_steps=at_least(0), keep=Rule(lambda v: isinstance(v, int), "an integer (<= 0 keeps all)"))
@dataclass
class CheckpointConfig:
    """Atomic checkpointing and auto-resume."""

    every_steps: int = 1000  # save a resumable checkpoint every N optimizer steps (0 = only at the end)
    keep: int = 2  # how many recent checkpoints to keep (<= 0 keeps all)
    resume: bool = True  # resume from the newest checkpoint in run_dir/checkpoints if there is one
    save_on_sigterm: bool = True  # checkpoint at the next step boundary after SIGTERM/SIGUSR1/SIGUSR2 (submitit)
    # write shards on a background thread (state staged to CPU first) so training does not wait for the disk;
    # the step directory appears once the write has finished (next save or end of training)
    async_save: bool = False


@checks(
    lr=at_least(0.0),
    eps=at_least(0.0),
    weight_decay=at_least(0.0),
    grad_accum=at_least(1),
    betas=Rule(lambda v: len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v), "two values in [0, 1)"),
    grad_clip=FINITE,
    nonfinite=one_of("stop", "skip"),
    global_batch=at_least(0),
    lr_scaling=one_of("none", "accum"),
)
@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay and gradient clipping; the global batch (common/batch_plan.py)."""

    lr: float = 5e-5  # base peak learning rate (the effective one follows lr_scaling; first log line)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # Adam (beta1, beta2)
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.05  # decoupled weight decay
    grad_clip: float = 2.0  # max global grad norm (<= 0 disables)
    grad_accum: int = 1  # micro-batches per optimizer step (with global_batch > 0: derived unless set > 1)
    # samples per optimizer step over all ranks; > 0: each rank's micro-batch (<= data.batch_size) and the
    # accumulation are derived from the world size (refused when it does not divide); 0 = data.batch_size x
    # grad_accum x world size (follows the GPU count)
    global_batch: int = 0
    lr_scaling: str = "none"  # none: lr as given | accum: lr x accumulation count (the official VARSR rule)
    # a NaN/inf loss or gradient norm: `stop` (checked on the device, read before every save/log line: the run
    # stops naming the step, no checkpoint or export is written, the newest checkpoint stays the last good one)
    # or `skip` (that update is dropped with a warning; costs one host read per step; not with DeepSpeed).
    # fp16 with a loss scaler: an inf gradient norm is the scaler's own skipped overflow step, only the loss counts
    nonfinite: str = "stop"


class _OneLineErrors:
    """Turn user-facing errors (bad paths, bad config values, bad overrides) into one line + exit 2.

    A traceback through Hydra and the training loop tells a user nothing about the typo in their
    command line; set ``ARSR_DEBUG=1`` to get the traceback anyway.
    """

    USER_ERRORS = (
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ValueError,
        KeyError,
        UserError,
    )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import os
        import sys

        if exc is None or os.environ.get("ARSR_DEBUG"):
            return False
        import errno

        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        # a full or read-only disk met while writing outputs is the user's to fix, not a bug
        disk = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
        if disk or isinstance(exc, self.USER_ERRORS + (HydraException, OmegaConfBaseException)):
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            cause = exc.__cause__  # Hydra's "Error merging override x=y" keeps the reason here
            if cause is not None and str(cause).strip():
                lines.append("(" + str(cause).strip().splitlines()[0] + ")")
            msg = " ".join(lines)[:400] if lines else type(exc).__name__
            print(f"error: {msg}  (ARSR_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise SystemExit(2)
        return False


one_line_errors = _OneLineErrors


def _check_sweep_inputs(app: str, config_name: str, args: list[str]) -> None:
    """``hydra.sweep.dir`` against every input folder of a multirun, swept values included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from common.paths import INPUT_KEYS, check_sweep_dir

    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    cfg = compose_config(app, config_name, [o.input_line for o in parsed if not o.is_sweep_override()], True)
    for key in INPUT_KEYS:
        swept = [o for o in parsed if o.key_or_group == key and o.is_sweep_override()]
        if swept:
            values = list(swept[0].sweep_string_iterator())
        elif key in cfg and not OmegaConf.is_missing(cfg, key):
            values = [cfg[key]]
        else:
            values = []
        for value in values:
            check_sweep_dir(cfg.hydra.sweep.dir, {key: value})


def run_app(
    app: str,
    config_name: str,
    schema: type,
    fn,
    argv: list[str] | None = None,
    typed: bool = True,
    spawn_script: str | None = None,
    view=None,
    dry_run=None,
):
    """Shared body of the ``launch/`` entry points.

    A plain call (also under torchrun / the deepspeed launcher) composes the config on every rank
    with the compose API, so no rank changes directory or makes its own output folder. With
    ``-m``/``--multirun`` the same job goes through ``@hydra.main`` instead, which is what makes
    Hydra sweeps and the submitit SLURM launcher (``-m hydra/launcher=slurm``) work. ``fn``
    receives the config validated against ``schema`` (a dataclass instance when ``typed``).
    ``spawn_script`` (training launchers pass their own path): when no launcher started this
    process, start the ``nproc`` ranks as torchrun would and return ``{"spawned": True}``
    (``common.spawn``); a failed rank's exit code becomes this process's exit code.
    ``view(cfg, hydra_cfg)`` (sampling launchers) maps the composed config to what ``schema``
    validates, given Hydra's own node (``overrides.task``, ``run.dir``, ``mode``, ``job``): e.g. an
    experiment's preset block applied below the command line, a default output folder.
    ``dry_run`` (a ``common.dry_run_report.DryRunApp``): before any rank starts, ``dry_run=DEVICE``
    prints the full-size simulation and returns, and a CUDA launch runs the cached preflight
    (``preflight=false`` skips it).
    Every error inside goes through `one_line_errors` (also inside a sweep job, where Hydra would
    otherwise print its traceback).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in args if not a.startswith("--local_rank")]  # the deepspeed launcher appends it
    convert = to_dataclass if typed else validate

    def _prepare(cfg, hc):
        return convert(schema, cfg if view is None else view(cfg, hc))

    def _spawn_or_run(cfg, overrides: list[str]):
        if dry_run is not None:
            from common.dry_run_report import dry_run_or_preflight

            done = dry_run_or_preflight(cfg, dry_run)
            if done is not None:
                return done
        if spawn_script is not None:
            from common.spawn import maybe_spawn

            code = maybe_spawn(cfg, spawn_script, overrides)  # children compose `overrides` again
            if code is not None:
                if code:
                    raise SystemExit(code)
                return {"spawned": True}
        return fn(cfg)

    if "-m" in args or "--multirun" in args:
        import hydra

        @hydra.main(version_base="1.3", config_path=app_config_dir(app), config_name=config_name)
        def _job(cfg):
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            with one_line_errors():
                return _spawn_or_run(_prepare(cfg, hc), list(hc.overrides.task))

        sys.argv = [sys.argv[0], *args]
        with one_line_errors():
            _check_sweep_inputs(app, config_name, args)  # before Hydra writes multirun.yaml anywhere
            return _job()
    with one_line_errors():
        cfg, hc = compose_config(app, config_name, args, hydra_node=view is not None), None
        if view is not None:
            cfg, hc = split_hydra(cfg)
        return _spawn_or_run(_prepare(cfg, hc), args)
