"""Checkpoint integrity: a checksum per file of a step, and a guard against non-finite training steps.

Size checks catch truncation, the unpickling allowlists catch planted files, but a shard whose bytes
were overwritten in place (a disk or copy fault, size unchanged) loaded without a word, trained to
NaN, and the NaN weights were then saved, exported and used to prune the last good step. Hence:

- :func:`checksum_share` / :func:`verify_share`: SHA-256 of every file of a checkpoint, recorded in
  ``meta.json["checksums"]`` (relative path -> hex digest) when it is published and checked before
  a resume or an export reads it. Both split the files over the ranks (file ``i`` goes to rank
  ``i % world``), so a 100 GB 7B checkpoint is hashed in parallel, not by rank 0 alone.
- :class:`FiniteGuard`: the loss and gradient norm of every optimizer step are checked on the
  device (no host read per step); the first non-finite step is read out before anything is saved
  or exported (``optim.nonfinite=stop``, the default: stop with one line naming the step, the last
  good checkpoint stays the newest), or the update is skipped at once (``optim.nonfinite=skip``:
  one host read per step).
- :class:`disk_full_is_one_line`: a save or export that meets a full disk removes its temp files
  and says so in one line (exit 2 through ``common.config.one_line_errors``), not a traceback.
- :func:`describe_mismatch`: which tensors differ between a checkpoint and the model resuming it.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import torch

from common.paths import UserError

ALGO = "sha256"
_CHUNK = 8 << 20
UNHASHED = ("meta.json", "COMPLETE")  # written after the checksums (meta.json holds them)


class NonFiniteError(UserError):
    """A training step produced a NaN/inf loss or gradient norm (one line naming the step)."""


def file_digest(path) -> str:
    h = hashlib.new(ALGO)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_files(step_dir) -> list[str]:
    """The files of a step directory that its checksums cover (relative POSIX paths, sorted)."""
    root = Path(step_dir)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in UNHASHED
    )


def checksum_share(step_dir, rank: int = 0, world: int = 1) -> dict[str, str]:
    """Digests of this rank's share of the files of ``step_dir``."""
    files = checkpoint_files(step_dir)
    return {rel: file_digest(Path(step_dir) / rel) for i, rel in enumerate(files) if i % world == rank}


def verify_share(step_dir, checksums: dict, rank: int = 0, world: int = 1) -> str | None:
    """None when this rank's share of ``checksums`` matches the files, else a line naming the bad file."""
    for i, (rel, want) in enumerate(sorted(checksums.items())):
        if i % world != rank:
            continue
        f = Path(step_dir) / rel
        if not f.is_file():
            return f"{f}: missing"
        got = file_digest(f)
        if got != want:
            return f"{f}: {ALGO} mismatch (the contents changed after the save: a silently corrupted shard)"
    return None


def params_finite(module) -> bool:
    """Whether every parameter (this rank's shards under FSDP2) holds finite values; no host sync per tensor."""
    by_device: dict = {}  # one host read per device (CPU-offloaded parameters live beside GPU ones)
    for p in module.parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        if t.device.type != "meta" and t.numel():
            by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


class FiniteGuard:
    """Watches each optimizer step's loss and gradient norm for NaN/inf (see the module docstring).

    ``policy``: ``stop`` records the first bad step on the device and :meth:`check` raises
    :class:`NonFiniteError` naming it (collective: the earliest bad step of any rank); ``skip``
    makes :meth:`skip_update` true for a bad step, so the caller drops that update.
    """

    def __init__(self, policy: str = "stop"):
        if policy not in ("stop", "skip"):
            raise ValueError(f"optim.nonfinite={policy!r} is not allowed: must be one of stop, skip")
        self.policy = policy
        self.first_bad: torch.Tensor | None = None
        self.skipped: list[int] = []

    @staticmethod
    def _bad(loss, grad_norm) -> torch.Tensor:
        vals = [torch.as_tensor(v).detach().float().reshape(()) for v in (loss, grad_norm) if v is not None]
        return ~torch.stack([torch.isfinite(v.to(vals[0].device)) for v in vals]).all()

    def record(self, step: int, loss, grad_norm) -> None:
        """``step``: the step number this update produces. Device ops only (stop policy)."""
        if self.policy != "stop":  # skip: bad steps were dropped at once by skip_update
            return
        bad = self._bad(loss, grad_norm)
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad)

    def skip_update(self, step: int, loss, grad_norm) -> bool:
        """Skip policy: True (on every rank) when this step's loss or norm is non-finite on any rank."""
        from common.dist import any_rank

        if self.policy != "skip":
            return False
        if any_rank(bool(self._bad(loss, grad_norm))):
            from common.logging import get_logger

            get_logger("arsr.train").warning(f"step {step}: non-finite loss or gradient norm; update skipped")
            self.skipped.append(step)
            return True
        return False

    def check(self) -> None:
        """Raise NonFiniteError naming the first non-finite step seen so far (collective, one host read)."""
        from common.dist import all_reduce_max

        mine = -1 if self.first_bad is None else int(self.first_bad)
        # earliest bad step over ranks: max of (-step), with "none" as a very negative number
        neg = all_reduce_max(torch.tensor([float(-mine if mine >= 0 else -(2**62))]))
        first = int(-neg.item())
        if 0 <= first < 2**62:
            raise NonFiniteError(
                f"non-finite loss or gradient norm at step {first}: stopping without saving a checkpoint or "
                "export (the newest checkpoint is the last good one; lower optim.lr, or set optim.nonfinite=skip "
                "to drop such updates)"
            )


def model_mismatch(state_dir, model) -> str:
    """'' when the DCP checkpoint in ``state_dir`` holds exactly ``model``'s tensors and shapes (global
    shapes: DTensors too), else which differ, in one line (see :func:`describe_mismatch`)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from common.checkpoint_dcp import read_metadata

    if not Path(state_dir).is_dir():
        return ""
    saved = {
        k[len("model.") :]: list(v.size)
        for k, v in read_metadata(state_dir).state_dict_metadata.items()
        if k.startswith("model.") and isinstance(v, TensorStorageMetadata)
    }
    now = {k: list(v.shape) for k, v in get_model_state_dict(model).items() if torch.is_tensor(v)}
    return describe_mismatch(saved, now)


def describe_mismatch(saved: dict, now: dict, limit: int = 4) -> str:
    """'' when ``saved`` and ``now`` (name -> shape) agree, else which tensors differ, in one line."""

    def few(names):
        names = sorted(names)
        return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")

    parts = []
    shapes = [
        f"{k} {saved[k]} in the checkpoint vs {now[k]} now" for k in sorted(set(saved) & set(now)) if saved[k] != now[k]
    ]
    if shapes:
        parts.append(
            "shapes differ: "
            + "; ".join(shapes[:limit])
            + (f" (+{len(shapes) - limit} more)" if len(shapes) > limit else "")
        )
    if set(saved) - set(now):
        parts.append(f"{len(set(saved) - set(now))} tensor(s) only in the checkpoint: {few(set(saved) - set(now))}")
    if set(now) - set(saved):
        parts.append(f"{len(set(now) - set(saved))} tensor(s) only in this model: {few(set(now) - set(saved))}")
    return "; ".join(parts)


def _is_disk_full(e: BaseException | None, depth: int = 0) -> bool:
    if e is None or depth > 6:
        return False
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
        return True
    inner = list(getattr(e, "failures", {}).values()) if isinstance(getattr(e, "failures", None), dict) else []
    return any(
        _is_disk_full(x, depth + 1) for x in [e.__cause__, e.__context__, *inner] if isinstance(x, BaseException)
    )


class disk_full_is_one_line:
    """A full disk while writing ``what`` into ``tmp`` (a temp file or folder that would be renamed into
    place): remove ``tmp`` and raise one OSError(ENOSPC) line instead of DCP's or torch's traceback."""

    def __init__(self, tmp: Path, what: str):
        self.tmp, self.what = Path(tmp), what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not _is_disk_full(exc):
            return False
        shutil.rmtree(self.tmp, ignore_errors=True) if self.tmp.is_dir() else self.tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(self.tmp.parent).free / 2**20 if self.tmp.parent.exists() else 0
        raise OSError(
            errno.ENOSPC,
            f"disk full while writing {self.what} to {self.tmp.parent} ({free:.0f} MiB free); the unfinished "
            "write was removed and what was there before is intact: free space and run again",
        ) from None
