"""The one training-state manager of VARSR, PURE and tokenizer fine-tuning: layout, save, discovery, resume.

On-disk layout (one per run, every backend)::

    <run_dir>/checkpoints/step_<n:08d>/
        meta.json          {"step", "format": "dcp" | "deepspeed", "world_size", "app", "extra": {...},
                            "checksums": {relative path: sha256}}
        state/             DCP: .metadata + one __<rank>_0.distcp per rank (model, optimizer, objects)
        ds/                DeepSpeed engine files instead of state/ (format "deepspeed")
        universal/         DeepSpeed universal form, made on demand for a different world size
        rng/rank_<r>.pt    every rank's RNG streams (weights_only-safe tensors and numbers)
        COMPLETE           written last

A save goes to ``checkpoints/.tmp_step_<n>/`` and is renamed once every rank has finished, so a
killed save never looks like a checkpoint; such orphans are deleted when the next run starts.
Discovery/auto-resume rule: the newest ``step_<n>`` with ``COMPLETE`` whose files pass
verification (safe metadata, shards long enough, no pickled globals beyond the allowlist, every
file's checksum as recorded in ``meta.json``) and load; a bad one is skipped with a warning naming
the bad file and the previous one is used. A checkpoint that is fine but does not fit (another
app's run dir, a changed model) is not "bad": that is a one-line error naming the cause.

Safety rules (``common.run_lock``, ``common.integrity``): the run dir is locked while a manager
lives (a second training on it is refused); a save whose weights are not finite is refused (so
NaN never replaces or prunes a good step); pruning renames a step away before deleting it, so a
concurrent reader (an export) never sees a half-deleted step; a full disk is one line naming it.

Model and optimizer go through ``torch.distributed.checkpoint.state_dict`` (FQN-keyed, sharded
under FSDP2), so each rank writes and reads only its shards and any world size can resume.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from common.checkpoint import _fsync_dir, atomic_save, atomic_write_bytes, rng_state, safe_load, set_rng_state
from common.dist import all_gather_object, any_rank, barrier, broadcast_object, get_rank, get_world_size
from common.integrity import (
    NonFiniteError,
    checksum_share,
    disk_full_is_one_line,
    model_mismatch,
    params_finite,
    verify_share,
)
from common.logging import get_logger
from common.paths import UserError
from common.run_lock import lock_run_dir, release

log = get_logger("arsr.checkpoint")
STEP_RE = re.compile(r"^step_(\d{8,})$")
TMP_PREFIX = ".tmp_step_"
PRUNED_PREFIX = ".pruned_step_"  # a step being deleted by `prune` (renamed first: never half-deleted under its name)
COMPLETE = "COMPLETE"


def checkpoint_root(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step_{int(step):08d}"


def list_steps(run_dir) -> list[tuple[int, Path]]:
    """Every ``step_<n>`` directory (complete or not), oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir())


def has_checkpoint(run_dir) -> bool:
    """Whether a run directory holds a finished checkpoint (decides "resume" vs "initialise" early)."""
    return any((p / COMPLETE).is_file() for _, p in list_steps(run_dir))


def read_meta(path) -> dict:
    return json.loads((Path(path) / "meta.json").read_text())


class CheckpointMismatch(UserError):
    """The checkpoint is intact but was written by another app or for another model (one line)."""


def verify(path, checksums: bool = True) -> dict:
    """Meta of a complete, safe-looking checkpoint; ValueError naming the first bad file otherwise.

    ``checksums=False`` skips hashing the files (the caller verifies them itself, split over ranks)."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path / COMPLETE}: missing (save did not finish)")
    try:
        meta = read_meta(path)
        int(meta["step"])
    except Exception as e:
        raise ValueError(f"{path / 'meta.json'}: unreadable ({type(e).__name__}: {e})") from None
    allowed: set[str] = set()
    if meta.get("format") == "deepspeed":
        from common.checkpoint_ds import allowed_global_names

        allowed = allowed_global_names()
    if meta.get("format") != "deepspeed" or (path / "state").is_dir():
        from common.checkpoint_dcp import verify_sharded

        verify_sharded(path / "state")
    for f in sorted(path.rglob("*.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(f)) - allowed
        except Exception as e:  # truncated zip, not a torch file
            raise ValueError(f"{f}: unreadable ({type(e).__name__}: {e})") from None
        if unsafe:
            raise ValueError(f"{f}: holds pickled globals {sorted(unsafe)} (refusing to unpickle)")
    if checksums and (bad := verify_share(path, meta.get("checksums") or {})):
        raise ValueError(bad)
    return meta


def resumable(run_dir, checksums: bool = True) -> list[tuple[Path, dict]]:
    """Complete checkpoints that pass :func:`verify`, newest first; bad ones are warned about by name."""
    good = []
    for _, path in reversed(list_steps(run_dir)):
        try:
            good.append((path, verify(path, checksums)))
        except (ValueError, OSError) as e:  # OSError: pruned by a running trainer while we looked
            if path.exists():
                log.warning(f"skipping checkpoint {path.name}: {e}")
    return good


def clean_orphans(run_dir) -> list[Path]:
    """Delete temp directories/files left by a save that was killed (call on one rank, before training)."""
    root = checkpoint_root(run_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((TMP_PREFIX, PRUNED_PREFIX)) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.warning(f"removed {len(removed)} unfinished checkpoint temp(s): {', '.join(p.name for p in removed)}")
    return removed


@dataclass
class Resumed:
    """What a resume restored: the step and the app's JSON ``extra``. This rank's RNG streams are
    applied by :meth:`restore_rng` when the app chooses (PURE creates its data iterator first)."""

    step: int
    path: Path
    extra: dict = field(default_factory=dict)
    rng: dict | None = None  # None: written by another world size (streams cannot continue)

    def restore_rng(self) -> bool:
        if self.rng is not None:
            set_rng_state(self.rng)
        return self.rng is not None


class TrainState:
    """Save/resume model, optimizer, stateful objects (scheduler, scaler, EMA), RNG, step and ``extra``.

    ``model``: the (wrapped) module, or a DeepSpeed engine when ``engine`` is given. ``objects``:
    name -> object with ``state_dict``/``load_state_dict`` (scheduler, GradScaler, EMA...).
    Every method that touches files is collective: all ranks call it.
    """

    def __init__(
        self,
        run_dir,
        model,
        optimizer=None,
        objects: dict | None = None,
        keep: int = 2,
        async_save: bool = False,
        engine=None,
        app: str | None = None,
    ):
        self.run_dir, self.model, self.optimizer = Path(run_dir), model, optimizer
        self.objects = dict(objects or {})
        self.keep, self.async_save, self.engine = int(keep), bool(async_save), engine
        self.app = app  # recorded in meta.json; a resume by another app is refused by name
        self._pending = None
        self._group = None
        self._bad: set[str] = set()  # checkpoints resume skipped: kept for inspection, never counted by `keep`
        # before touching anything: a second run on this dir must not delete this one's temp folders
        self._lock = lock_run_dir(self.run_dir, "training")
        if get_rank() == 0:
            clean_orphans(self.run_dir)
        barrier()

    def close(self) -> None:
        """Release the run-dir lock (also released when the process exits)."""
        if get_rank() == 0:
            release(self._lock)

    # -- state dicts ------------------------------------------------------------------------------
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        if self.engine is not None:  # DeepSpeed checkpoints model and optimizer itself
            state = {}
        elif self.optimizer is not None:
            msd, osd = get_state_dict(self.model, self.optimizer)
            state = {"model": msd, "optim": osd}
        else:
            state = {"model": get_model_state_dict(self.model)}
        state["objects"] = {k: _plain_state(v.state_dict()) for k, v in self.objects.items()}
        return state

    def _apply(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if self.engine is not None:
            pass
        elif self.optimizer is not None:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            set_model_state_dict(self.model, state["model"])
        for k, obj in self.objects.items():
            obj.load_state_dict(state["objects"][k])

    def _ckpt_group(self):
        """A gloo group for DCP's own collectives: async saves run them on a background thread, which
        must not interleave with the training thread's NCCL collectives on the default group. Also
        in a world of one: DCP's async save needs a CPU-capable group, which NCCL alone is not."""
        if self._group is None and torch.distributed.is_initialized():
            from common.dist import new_cpu_group

            self._group = new_cpu_group()
        return self._group

    # -- save -------------------------------------------------------------------------------------
    def save(self, step: int, extra: dict | None = None) -> Path:
        """Write ``step_<step>`` (collective). With ``async_save`` the DCP write finishes in the
        background and the directory appears at the next ``save``/``wait``."""
        self.wait()
        final = step_dir(self.run_dir, step)
        tmp = final.parent / f"{TMP_PREFIX}{int(step):08d}"
        # NaN/inf weights never become a checkpoint (which would then prune the last good one). Parameters
        # only: buffers may hold -inf on purpose (attention masks); an EMA of NaN weights follows them.
        if any_rank(not (self.engine is not None or params_finite(self.model))):
            raise NonFiniteError(
                f"step {step}: the weights hold NaN/inf; not saving a checkpoint "
                "(the newest one stays the last good one)"
            )
        with disk_full_is_one_line(tmp, f"checkpoint step {step}"):
            if get_rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            barrier()
            atomic_save(rng_state(), tmp / "rng" / f"rank_{get_rank():05d}.pt")
            meta = {
                "step": int(step),
                "world_size": get_world_size(),
                "time": time.time(),
                "app": self.app,
                "extra": extra or {},
                "format": "deepspeed" if self.engine is not None else "dcp",
            }
            future = None
            if self.engine is not None:
                self.engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
            if self.engine is None or self.objects:  # DeepSpeed: only the app's objects (EMA) go to DCP
                from common.checkpoint_dcp import save_sharded

                future = save_sharded(self._state(), tmp / "state", self._ckpt_group(), self.async_save)
        self._pending = (future, tmp, final, meta)
        if future is None:
            self.wait()
        return final

    def wait(self) -> None:
        """Finish a pending (async) save: every rank's shards are on disk, then rank 0 publishes it."""
        if self._pending is None:
            return
        future, tmp, final, meta = self._pending
        self._pending = None
        with disk_full_is_one_line(tmp, f"checkpoint step {meta['step']}"):
            if future is not None:
                future.result()
            barrier()
            # every rank hashes its share of the files (in parallel); rank 0 records them in meta.json
            shares = all_gather_object(checksum_share(tmp, get_rank(), get_world_size()), self._ckpt_group())
            meta = dict(meta, checksums={k: v for share in shares for k, v in share.items()})
            if get_rank() == 0:
                atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=1, default=str).encode())
                atomic_write_bytes(tmp / COMPLETE, b"")
                if final.exists():  # re-saving a step (e.g. after a resume at that step) replaces it
                    _remove_step(final)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
                self._bad.discard(final.name)
                self.prune()
        barrier()

    def prune(self) -> None:
        if self.keep > 0:
            good = [p for _, p in list_steps(self.run_dir) if p.name not in self._bad]
            for p in good[: -self.keep]:
                _remove_step(p)

    # -- resume -----------------------------------------------------------------------------------
    def resume(self) -> Resumed | None:
        """Load the newest good checkpoint (see module docstring); None when the run has none.

        Raises ValueError when finished checkpoints exist but none can be loaded: silently starting
        over would overwrite a run's progress."""
        # rank 0 checks the structure; the checksums are verified by all ranks, each its share
        good = resumable(self.run_dir, checksums=False) if get_rank() == 0 else None
        candidates = broadcast_object([(str(p), m) for p, m in good] if good is not None else None)
        self._bad = {p.name for _, p in list_steps(self.run_dir)} - {Path(p).name for p, _ in candidates}
        for path, meta in candidates:
            self._check_app(Path(path), meta)
            bad = all_gather_object(
                verify_share(path, meta.get("checksums") or {}, get_rank(), get_world_size()), self._ckpt_group()
            )
            bad = next((b for b in bad if b), None)
            try:
                if bad:
                    raise ValueError(bad)
                self._check_fits(Path(path), meta)
                return self.load(Path(path), meta)
            except (ValueError, KeyError, OSError, pickle.UnpicklingError, CheckpointException) as e:
                # CheckpointException: DCP gathered a failure from some rank (all ranks raise it)
                log.warning(f"skipping checkpoint {Path(path).name}: {_first_line(e)}; trying the previous one")
                self._bad.add(Path(path).name)
        if has_checkpoint(self.run_dir):
            raise ValueError(
                f"{checkpoint_root(self.run_dir)}: no checkpoint could be loaded (see the warnings); "
                "move the directory away to start from the initial weights"
            )
        return None

    def _check_app(self, path: Path, meta: dict) -> None:
        other = meta.get("app")
        if self.app and other and other != self.app:
            raise CheckpointMismatch(
                f"{self.run_dir}: this run dir belongs to {other} ({path.name} was written by {other}'s training), "
                f"not {self.app}; choose another run.run_dir"
            )

    def _check_fits(self, path: Path, meta: dict) -> None:
        """CheckpointMismatch naming the tensors whose names/shapes differ from the current model (DCP;
        DeepSpeed checks its own module keys with load_module_strict)."""
        diff = None if self.engine is not None else model_mismatch(path / "state", self.model)
        if not diff and (path / "state").is_dir():  # e.g. ema.enabled switched on for a run saved without it
            from common.checkpoint_dcp import read_metadata

            saved = {
                k.split(".")[1] for k in read_metadata(path / "state").state_dict_metadata if k.startswith("objects.")
            }
            absent = sorted(k for k, o in self.objects.items() if k not in saved and _plain_state(o.state_dict()))
            diff = f"no saved state for {', '.join(absent)} (was it switched on since?)" if absent else None
        if diff:
            raise CheckpointMismatch(
                f"{path}: written for a different model than this config builds ({diff}); resume with the "
                f"run's own config ({self.run_dir / 'config.yaml'} / meta.json) or choose a new run.run_dir"
            )

    def load(self, path: Path, meta: dict | None = None) -> Resumed:
        meta = meta or verify(path)
        if meta.get("format") == "deepspeed":
            self._load_deepspeed(path, meta)
        if meta.get("format") != "deepspeed" or self.objects:
            from common.checkpoint_dcp import load_sharded

            state = self._state()
            load_sharded(state, path / "state", self._ckpt_group())
            self._apply(state)
        rng = path / "rng" / f"rank_{get_rank():05d}.pt"
        same = int(meta.get("world_size", 1)) == get_world_size()
        log.info(f"resumed from {path} at step {meta['step']}")
        return Resumed(int(meta["step"]), path, dict(meta.get("extra") or {}), safe_load(rng) if same else None)

    def _load_deepspeed(self, path: Path, meta: dict) -> None:
        from common.checkpoint_ds import convert_to_universal, load_engine_checkpoint

        same = int(meta.get("world_size", 1)) == get_world_size()
        if not same:
            # DeepSpeed's partitioned files only fit the world size that wrote them; its universal
            # form (one folder per parameter) loads on any. Rank 0 converts once, next to ds/.
            if get_rank() == 0:
                log.warning(
                    f"{path}: written by {meta.get('world_size')} ranks, resuming on {get_world_size()}: "
                    "converting to a DeepSpeed universal checkpoint"
                )
                convert_to_universal(path)
            barrier()
        load_engine_checkpoint(self.engine, path, universal=not same)


def load_model_only(path, model_state: dict, ema: bool = False, prefix: str = "") -> bool:
    """Fill ``model_state`` (FQN -> tensor, e.g. a fresh CPU model's ``state_dict()``, in place) from
    checkpoint ``path`` reading model entries only: the optimizer state is never loaded (export, one process).

    ``ema=True`` takes the EMA average (``objects.ema.shadow``, keyed like ``model_state``) when the
    checkpoint has one; returns whether it did. DCP: a partial load of those keys. DeepSpeed
    without EMA: the per-parameter ``fp32.pt`` files of its universal form (converted first if
    needed), since ZeRO keeps the weights inside optimizer files. ``prefix``: where the model sits in
    the training root (PURE's loss module holds the LM as ``lm.``); the EMA average has no prefix.
    """
    path = Path(path)
    meta = verify(path)
    from common.checkpoint_dcp import load_sharded, read_metadata

    state_dir = path / "state"
    use_ema = (
        ema
        and state_dir.is_dir()
        and any(k.startswith("objects.ema.shadow.") for k in read_metadata(state_dir).state_dict_metadata)
    )
    if use_ema:
        load_sharded({"objects": {"ema": {"shadow": model_state}}}, state_dir, partial=True)
    elif meta.get("format") == "deepspeed":
        from common.checkpoint_ds import convert_to_universal, universal_model_weights

        got = universal_model_weights(convert_to_universal(path), [prefix + k for k in model_state])
        for k, t in model_state.items():
            t.copy_(got[prefix + k].reshape(t.shape))
    else:
        load_sharded({"model": {prefix + k: t for k, t in model_state.items()}}, state_dir, partial=True)
    return use_ema


def _remove_step(path: Path) -> None:
    """Rename a step out of the ``step_<n>`` namespace, then delete it: readers see it whole or not at all."""
    gone = path.parent / f"{PRUNED_PREFIX}{path.name[len('step_') :]}.{os.getpid()}"
    try:
        os.replace(path, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def _plain_state(sd: dict) -> dict:
    # A LambdaLR stores its schedule callables' attributes; the schedule is rebuilt from the config
    # (which may have changed on purpose), so only the counters are checkpointed: None keeps the
    # current callable when loading.
    if "lr_lambdas" in sd:
        sd = dict(sd, lr_lambdas=[None] * len(sd["lr_lambdas"]))
    return sd


def _first_line(e: BaseException) -> str:
    s = str(e)
    return f"{type(e).__name__}: {s.splitlines()[0] if s else ''}"
