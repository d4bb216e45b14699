"""DeepSpeed engine checkpoints without executing pickled code, and the world-size-free universal form.

DeepSpeed writes its engine state with ``torch.save`` and reads it back with
``torch.load(..., weights_only=False)`` from a dozen places (engine load, ZeRO-3 universal load,
``ds_to_universal``). A ``*model_states.pt`` planted in a run directory would run code on resume.
:func:`deepspeed_safe_loading` makes every ``torch.load`` inside it a ``weights_only=True`` load
that additionally accepts exactly the DeepSpeed classes its checkpoints hold (found by listing the
globals of real ZeRO-0..3 checkpoints with ``torch.serialization.get_unsafe_globals_in_checkpoint``):
the loss scalers, the ZeRO stage enum and ZeRO-1/2's parameter fragment addresses. Anything else
refuses with ``UnpicklingError``.

Universal checkpoints (``deepspeed.checkpoint.ds_to_universal``) store one folder per parameter
with its fp32 weights and Adam moments; DeepSpeed can load them on any world size
(``checkpoint.load_universal``), and :func:`universal_model_weights` reads only the ``fp32.pt``
files, so an export never holds optimizer state.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from argparse import Namespace
from pathlib import Path

import torch

DS_TAG = "ds"  # the engine's tag directory inside a step directory
UNIVERSAL = "universal"  # converted form, next to DS_TAG


def _allowed_classes() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # fragment_address: ZeRO-1/2 optimizer files map each parameter to its slice of the flat
    # partition with it (a two-int dataclass: numel, start).
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def allowed_global_names() -> set[str]:
    """The allowlist as ``module.Class`` strings (the format of ``get_unsafe_globals_in_checkpoint``)."""
    return {f"{c.__module__}.{c.__qualname__}" for c in _allowed_classes()}


@contextlib.contextmanager
def deepspeed_safe_loading():
    """Within the block, ``torch.load`` never unpickles arbitrary objects (whatever the caller asks).

    DeepSpeed calls ``torch.load`` through the ``torch`` module attribute, so swapping the attribute
    reaches every call site, including ones in modules imported later.
    """
    real_load = torch.load
    allowed = _allowed_classes()

    @functools.wraps(real_load)
    def safe(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return real_load(*args, **kwargs)

    torch.load = safe
    try:
        yield
    finally:
        torch.load = real_load


def load_engine_checkpoint(engine, step_dir: Path, universal: bool = False) -> None:
    """Load DeepSpeed state from ``step_dir`` (its ``ds`` tag, or the converted ``universal`` one).

    ``load_universal`` is a config flag DeepSpeed reads at load time; it is switched on only for
    this call so a later save writes the normal per-rank layout again.
    """
    tag = UNIVERSAL if universal else DS_TAG
    old = engine._config.load_universal_checkpoint
    engine._config.load_universal_checkpoint = universal
    try:
        with deepspeed_safe_loading():
            path, _ = engine.load_checkpoint(
                str(step_dir),
                tag=tag,
                load_module_strict=True,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
    finally:
        engine._config.load_universal_checkpoint = old
    if path is None:
        raise ValueError(f"{step_dir / tag}: DeepSpeed found no checkpoint to load")


def convert_to_universal(step_dir: Path) -> Path:
    """``step_dir/ds`` -> ``step_dir/universal`` (single process, once; atomic via a temp dir)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    step_dir = Path(step_dir)
    out = step_dir / UNIVERSAL
    if (out / "zero").is_dir():
        return out
    tmp = step_dir / f".tmp_{UNIVERSAL}"
    shutil.rmtree(tmp, ignore_errors=True)
    # One worker: the conversion then runs in this process, under the safe loader (worker processes
    # would unpickle with DeepSpeed's own weights_only=False).
    args = Namespace(
        input_folder=str(step_dir / DS_TAG),
        output_folder=str(tmp),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with deepspeed_safe_loading():
        ds_to_universal(args)
    # DeepSpeed looks for <load_dir>/<tag>/zero/...; the converter writes <out>/zero directly
    # plus the model-state files under a step folder it names itself, which we flatten.
    os.replace(tmp, out)
    return out


def universal_model_weights(universal_dir: Path, names) -> dict:
    """``{name: fp32 tensor}`` read from a universal checkpoint's per-parameter ``fp32.pt`` only."""
    zero = Path(universal_dir) / "zero"
    out = {}
    for name in names:
        f = zero / name / "fp32.pt"
        if not f.is_file():
            raise KeyError(f"{universal_dir}: no fp32 weights for parameter {name!r}")
        obj = torch.load(f, map_location="cpu", weights_only=True)
        out[name] = obj["param"] if isinstance(obj, dict) else obj
    return out
