"""Checkpoint I/O that never loses what is already written and never unpickles untrusted files.

- ``atomic_save``: write to a temp file in the same directory, fsync, ``os.replace``, fsync the
  directory. A process killed mid-write leaves the previous checkpoint intact.
- ``safe_load``: ``torch.load(weights_only=True)`` or safetensors, nothing else.
- (training checkpoints, their layout and auto-resume: ``common.train_state``, built on these)
- ``rng_state`` / ``set_rng_state``: RNG streams as tensors and plain values (weights_only-safe).
- ``PreemptionHandler``: turns SIGTERM/SIGUSR1/SIGUSR2 (SLURM, submitit pre-emption) into a flag the loop
  polls, and hands the signal to submitit's requeue handler only after the checkpoint.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(binary_file)`` on a temp file and move it over ``path`` only once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temp name is the target's plus ~14 characters: cut, so a legal 255-byte file name still fits
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever happened (including KeyboardInterrupt/SystemExit), the old file is untouched.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """All-or-nothing write of a small file (JSON indexes, progress files, configs)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` that is all-or-nothing on POSIX filesystems."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, lambda f: f.write(blob))


def safe_load(path: str | os.PathLike, map_location="cpu"):
    """Load tensors without executing pickled code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a pickle with custom classes, or a truncated file
        raise ValueError(
            f"{path}: cannot be loaded safely with weights_only=True ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); convert a trusted file to safetensors first"
        ) from None


def rng_state() -> dict:
    """All RNG streams as tensors / plain values so the result loads with weights_only=True."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # This rank's device only (init_distributed binds it): another node may show fewer GPUs.
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        # Only the current device: restoring every saved GPU raises where fewer are visible (one GPU
        # per SLURM task after eight per node) and would overwrite other ranks' devices.
        dev = torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):  # written before: one state per visible GPU, ours at our index
            cuda = cuda[dev] if dev < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, dev)


def preemption_signals() -> tuple:
    """SIGTERM, SIGUSR1 and SIGUSR2, plus submitit's ``SUBMITIT_PREEMPT_SIGNAL`` when set.

    SLURM sends SIGTERM (and ``--signal=USR1@...`` when asked); submitit asks for SIGUSR2
    (``--signal=USR2@<signal_delay_s>``) and requeues the job from its own USR2 handler."""
    sigs = [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    extra = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper(), None)
    if isinstance(extra, signal.Signals) and extra not in sigs:
        sigs.append(extra)
    return tuple(sigs)


class PreemptionHandler:
    """Records pre-emption signals so the training loop can checkpoint at the next step boundary.

    SLURM sends SIGUSR1/SIGUSR2 (with ``--signal``; submitit uses USR2) or SIGTERM before killing a
    job; torchrun forwards SIGTERM to its workers. We never save from inside the handler: a
    half-finished optimizer step must not end up in a checkpoint.

    A Python handler that was installed before (submitit's: on USR2 it requeues the job and exits)
    would have run at once, mid-step and before any checkpoint. It is held back instead and called
    by :meth:`restore`, which the loops run after the checkpoint is on disk.
    """

    def __init__(self, signals=None):
        self.requested = False
        self.signum: int | None = None
        self._previous = {}
        for s in preemption_signals() if signals is None else signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum, frame):
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        """Put the previous handlers back; then hand a received signal to the previous Python handler
        (the checkpoint is written by now). Default/ignore dispositions are not re-raised: the loop
        already stopped, which is what they would have done."""
        previous = self._previous.get(self.signum)
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        if self.requested and callable(previous):
            self.requested = False
            previous(self.signum, None)
