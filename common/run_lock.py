"""Advisory locks on the folders a run writes: one training per run dir, one writer per output folder.

Two trainings started on the same ``run.run_dir`` used to interleave their rows in ``metrics.jsonl``,
delete each other's checkpoint temp folders and crash; two exports into one folder mixed shards.
A lock is a small JSON file (``pid``, ``host``, process start time, what holds it) created with
``O_EXCL``, so exactly one process wins even on NFS; it is removed when the holder exits (normally,
by an exception or by SIGTERM through the usual shutdown). A ``kill -9`` or a crashed node leaves
the file behind: such a lock is *stale* when its host is this machine and its pid is no longer
running (or is running but started at another time: a recycled pid), and is then taken over with a
warning. A lock held on another host cannot be checked from here; the refusal names the host, pid
and file so the user can remove it once that job is gone.

Within one process taking a lock again is a no-op (a trainer and its checkpoint manager both ask
for the run dir; a test builds trainers one after another), and one release frees it. Under
torchrun only rank 0 locks (:func:`lock_collective`) and every rank gets the same one-line
refusal, so all ranks exit 2 instead of hanging in a collective.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
import uuid
from pathlib import Path

from common.paths import UserError

LOCK_NAME = ".arsr.lock"
_HELD: dict[str, str] = {}  # real lock path -> token, for the locks this process holds


class LockedError(UserError):
    """The folder is in use by another live process (the message names it and the lock file)."""


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (/proc), to tell a recycled pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a zombie has exited (its parent has not reaped it: e.g. a container whose PID 1 does not reap)
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _start_time(pid)
    return started is None or now is None or now == started


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict | None, path: Path) -> str:
    if not info:
        return f"an unreadable lock file {path}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("time", 0))))
    return f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, since {since})"


def acquire(path, what: str) -> Path:
    """Take the lock file ``path`` for ``what`` ("training", "export", ...); LockedError when taken."""
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
    body = {"pid": pid, "host": host, "start": _start_time(pid), "what": what, "time": time.time(), "token": token}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read(path)
            if info is None and time.time() - _mtime(path) < 10:  # being written by its creator right now
                time.sleep(0.2)
                continue
            if info is not None and (info.get("host") != host or _alive(int(info.get("pid", -1)), info.get("start"))):
                raise LockedError(
                    f"{path.parent} is in use by {_describe(info, path)}; wait for it to finish, or delete "
                    f"{path} if that process is gone"
                ) from None
            from common.logging import get_logger

            get_logger("arsr.lock").warning(f"taking over the stale lock of {_describe(info, path)}: {path}")
            _remove_if(path, info)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        _HELD[key] = token
        return path
    raise LockedError(f"{path}: could not take the lock (another process keeps re-creating it)")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_if(path: Path, info: dict | None) -> None:
    """Remove ``path`` only if it still holds ``info`` (another process may have taken it meanwhile)."""
    if _read(path) == info:
        path.unlink(missing_ok=True)


def release(path) -> None:
    """Remove the lock file if this process holds it (a lock taken over by someone else is left alone)."""
    path = Path(path)
    token = _HELD.pop(str(path.resolve()), None)
    if token is None:
        return
    info = _read(path)
    if info is not None and info.get("token") == token:
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release(key)


class DirLock:
    """``with DirLock(folder, "export"):`` holds ``folder/.arsr.lock`` (or ``lock_file``) for the block."""

    def __init__(self, folder, what: str, lock_file=None):
        self.path = Path(lock_file) if lock_file is not None else Path(folder) / LOCK_NAME
        self.what = what

    def __enter__(self):
        acquire(self.path, self.what)
        return self

    def __exit__(self, *exc):
        release(self.path)
        return False


def target_lock_file(target) -> Path:
    """The lock of an output that is a file or a folder replaced as a whole: a hidden sibling."""
    target = Path(target)
    return target.parent / f".{target.name}.arsr.lock"


def lock_collective(path, what: str) -> Path:
    """Rank 0 takes ``path`` (held until this process exits or :func:`release`); every rank raises the
    same LockedError when it is taken. Collective: all ranks call it."""
    from common.dist import broadcast_object, get_rank

    err = None
    if get_rank() == 0:
        try:
            acquire(path, what)
        except LockedError as e:
            err = str(e)
    err = broadcast_object(err)
    if err is not None:
        raise LockedError(err)
    return Path(path)


def lock_run_dir(run_dir, what: str = "training") -> Path:
    """Hold ``run_dir/.arsr.lock`` for the rest of this process (collective; see module docstring)."""
    return lock_collective(Path(run_dir) / LOCK_NAME, what)
