"""Exports written like checkpoints: into a temporary sibling, verified, then swapped in whole.

A PURE export is several files (shards + index + config.json). Written file by file into an
existing export folder, a ``kill -9`` left shards of two steps under the old index, which loaded
without a word; writing into a folder that held another model deleted that model's shards, and an
existing ``.pth`` was silently replaced. :func:`publish` closes all of these doors at once:

- the output is written to ``.<name>.tmp-<pid>`` next to the target (same file system), checked by
  the caller's ``verify`` (e.g. every shard the index names opens, with the right keys), and only
  then renamed over the target: readers see the old export or the new one, never a mix;
- an existing target is refused unless ``overwrite=True``, which replaces the target *as a whole*
  (the old folder is renamed aside, the new one renamed in, the old one deleted); nothing is ever
  merged into a folder, so files of another model are never touched without that flag;
- ``.<name>.arsr.lock`` (``common.run_lock``) keeps two exports from writing one target at once;
- leftovers of a killed export are cleaned at the next one: temp folders are deleted, and a target
  that was renamed aside but never replaced (killed between the two renames) is put back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.checkpoint import _fsync_dir
from common.integrity import disk_full_is_one_line
from common.paths import UserError
from common.run_lock import DirLock, target_lock_file


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _recover(target: Path) -> None:
    """Undo what a killed :func:`publish` left next to ``target`` (call with its lock held)."""
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        _remove(p)
    olds = sorted(target.parent.glob(f".{target.name}.old-*"))
    if olds and not target.exists() and not target.is_symlink():
        os.replace(olds.pop(), target)  # killed between "old aside" and "new in": the old export is back
    for p in olds:
        _remove(p)


def publish(target, write, verify=None, overwrite: bool = False, key: str = "out", what: str = "export") -> Path:
    """``write(tmp_path)`` builds the output (a file or a folder) at ``tmp_path``; ``verify(tmp_path)``
    raises if it is not complete; then it replaces ``target`` atomically. Returns ``target``."""
    target = Path(os.path.expanduser(str(target)))
    target.parent.mkdir(parents=True, exist_ok=True)
    with DirLock(target.parent, what, lock_file=target_lock_file(target)):
        _recover(target)
        if (target.exists() or target.is_symlink()) and not overwrite:
            kind = "folder" if target.is_dir() else "file"
            raise UserError(
                f"{key}={target} already exists (a {kind}); pass overwrite=true to replace it as a whole, "
                f"or choose another {key}"
            )
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        _remove(tmp)
        try:
            with disk_full_is_one_line(tmp, f"the {what} {target.name}"):
                write(tmp)
            if verify is not None:
                verify(tmp)
            if tmp.is_dir() and target.exists():  # a folder cannot be renamed over a folder: old aside first
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.replace(target, old)
                os.replace(tmp, target)
                _remove(old)
            else:
                if target.is_dir() and not tmp.is_dir():
                    _remove(target)
                os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            _remove(tmp)
    return target
