"""Hydra plumbing shared by every app, and the config pieces every training run has.

Config tree: each app's primary configs live in ``configs/<app>/`` (``varsr``, ``pure``, ``common``)
and the shared groups in ``configs/common/`` (``degradation/``, ``data/``, ``metrics/``). A Hydra
search-path plugin registered here puts ``configs/common`` on the search path of every app, so
``degradation=realesrgan`` works on any launcher without copying YAML between apps.

YAML files hold values; dataclasses (structured configs) hold the schema and the documentation of
every key. ``validate(schema, cfg)`` merges a composed config into its schema so a typo or a
wrong type is a one-line error at start-up rather than a crash hours into a run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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


def app_config_dir(app: str) -> str:
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}; expected one of {APPS}")
    return str(CONFIG_ROOT / app)


def compose_config(app: str, config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config with Hydra's compose API (tests, and every rank under torchrun)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=app_config_dir(app), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


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
        return OmegaConf.merge(base, cfg)
    except Exception as e:  # omegaconf errors are multi-line; keep the useful first line
        raise ValueError(f"invalid {schema.__name__} config: {str(e).splitlines()[0]}") from None


def to_dataclass(schema: type, cfg) -> Any:
    """A plain dataclass instance (nested dataclasses included) from a validated config."""
    return OmegaConf.to_object(validate(schema, cfg))


def dataclass_from_dict(schema: type, values: dict | None):
    """Build ``schema`` from a flat dict, ignoring keys the schema does not have (lenient readers)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return schema(**{k: v for k, v in (values or {}).items() if k in names})


@dataclass
class RunConfig:
    """Where a run writes, how it is seeded and tracked."""

    run_dir: str = "runs/default"  # all outputs (checkpoints, logs, grids, metrics) go here
    seed: int = 0  # global seed; ranks derive distinct streams from it
    wandb_mode: str = "offline"  # offline (default) | online | disabled
    wandb_project: str = "arsr"  # wandb project name
    device: str = "auto"  # auto (cuda if available) | cpu | cuda


@dataclass
class CheckpointConfig:
    """Atomic checkpointing and auto-resume."""

    every_steps: int = 1000  # save a resumable checkpoint every N optimizer steps (0 = only at the end)
    keep: int = 2  # how many recent checkpoints to keep (<= 0 keeps all)
    resume: bool = True  # resume from the newest checkpoint in run_dir/checkpoints if there is one
    save_on_sigterm: bool = True  # checkpoint at the next step boundary after SIGTERM/SIGUSR1


@dataclass
class OptimConfig:
    """AdamW with decoupled weight decay and gradient clipping."""

    lr: float = 5e-5  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # Adam (beta1, beta2)
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.05  # decoupled weight decay
    grad_clip: float = 2.0  # max global grad norm (<= 0 disables)
    grad_accum: int = 1  # micro-batches per optimizer step


class _OneLineErrors:
    """Turn user-facing errors (bad paths, bad config values, bad overrides) into one line + exit 2.

    A traceback through Hydra and the training loop tells a user nothing about the typo in their
    command line; set ``ARSR_DEBUG=1`` to get the traceback anyway.
    """

    USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import os
        import sys

        if exc is None or os.environ.get("ARSR_DEBUG"):
            return False
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, self.USER_ERRORS + (HydraException, OmegaConfBaseException)):
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            msg = " ".join(lines)[:400] if lines else type(exc).__name__
            print(f"error: {msg}  (ARSR_DEBUG=1 shows the traceback)", file=sys.stderr)
            raise SystemExit(2)
        return False


one_line_errors = _OneLineErrors


def run_app(app: str, config_name: str, schema: type, fn, argv: list[str] | None = None, typed: bool = True):
    """Shared body of the ``launch/`` entry points.

    A plain call (also under torchrun / the deepspeed launcher) composes the config on every rank
    with the compose API, so no rank changes directory or makes its own output folder. With
    ``-m``/``--multirun`` the same job goes through ``@hydra.main`` instead, which is what makes
    Hydra sweeps and the submitit SLURM launcher (``-m hydra/launcher=slurm``) work. ``fn``
    receives the config validated against ``schema`` (a dataclass instance when ``typed``).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    args = [a for a in args if not a.startswith("--local_rank")]  # the deepspeed launcher appends it
    convert = to_dataclass if typed else validate
    if "-m" in args or "--multirun" in args:
        import hydra

        @hydra.main(version_base="1.3", config_path=app_config_dir(app), config_name=config_name)
        def _job(cfg):
            return fn(convert(schema, cfg))

        sys.argv = [sys.argv[0], *args]
        with one_line_errors():
            return _job()
    with one_line_errors():
        return fn(convert(schema, compose_config(app, config_name, args)))
