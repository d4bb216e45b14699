"""Harness of the shipped-configuration tests: run a launcher exactly as the README tells a user to.

A shipped test starts ``launch/<app>.py`` with the README's own arguments (the experiment, the
backend it documents) plus SIZE overrides only: depth, width, image size, steps, data paths, run
directory, worker counts. :func:`check_overrides` holds every test to an explicit allowlist of keys
(``fnmatch`` patterns, optionally with a value check), so a dtype, backend, compile, activation
checkpointing, drop-path, EMA or validation switch cannot slip in to make a path pass on CPU.

The rest drives the run as a user (or a scheduler) would: :func:`start` a launcher in its own
process group (the self-spawned torchrun agent and its ranks), :func:`wait_for` a finished
checkpoint, :func:`kill` the launcher and every rank (SIGKILL = a crash, SIGTERM = pre-emption), restart it with
:func:`run` on another world size, and export through ``launch/export_checkpoint.py``.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Variables a parent launcher sets; a shipped run must start from a clean shell, as a user's does.
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
    "ROLE_RANK",
)

Allowed = Iterable[str] | Mapping[str, Callable[[str], bool] | None]


def positive(value: str) -> bool:
    """Value check for step intervals: a size may shrink, but 0 (= feature off) is not a size."""
    try:
        return int(value) > 0
    except ValueError:
        return False


def override_key(arg: str) -> str:
    """``model.depth`` of ``model.depth=2``, ``+exp`` -> ``exp``, ``~a.b`` -> ``a.b``."""
    return arg.split("=", 1)[0].lstrip("+~")


def check_overrides(args: Iterable[str], allowed: Allowed) -> None:
    """AssertionError naming every override whose key is not allowlisted (or whose value fails its check).

    ``allowed``: ``fnmatch`` patterns over keys (``data.sources.*.root``), or a mapping pattern ->
    ``check(value) -> bool`` (``None`` = any value). Arguments without ``=`` are refused too.
    """
    rules = dict(allowed) if isinstance(allowed, Mapping) else dict.fromkeys(allowed)
    bad = []
    for arg in args:
        if "=" not in arg:
            bad.append(f"{arg} (not key=value)")
            continue
        key, value = override_key(arg), arg.split("=", 1)[1]
        hits = [p for p in rules if fnmatch.fnmatchcase(key, p)]
        if not hits:
            bad.append(f"{arg} (key not in the size allowlist)")
        elif not any(rules[p] is None or rules[p](value) for p in hits):
            bad.append(f"{arg} (value refused by the allowlist)")
    assert not bad, "shipped-configuration test sets non-size keys: " + "; ".join(bad)


def launcher_env(**extra: str) -> dict:
    """A user's shell: no launcher variables inherited from pytest's parent, the checkout importable,
    one intra-op thread per rank (2-core CI), wandb offline."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", ARSR_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def command(script: str, args: Iterable[str]) -> list[str]:
    """``python launch/<script> ARGS`` (script relative to the repository, or absolute)."""
    return [sys.executable, str(REPO / script), *map(str, args)]


def start(script: str, args: Iterable[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a launcher in a new process group (so :func:`kill` reaches every rank); output -> ``log``."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(
            command(script, args),
            cwd=REPO,
            env=launcher_env() if env is None else env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run(script: str, args: Iterable[str], log: Path, timeout: float = 600, env: dict | None = None) -> tuple[int, str]:
    """Run a launcher to the end; (exit code, its output). The whole group is killed on timeout."""
    proc = start(script, args, log, env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, signal.SIGKILL)
        raise AssertionError(f"{script} did not finish in {timeout:.0f} s:\n{tail(log)}") from None
    return code, Path(log).read_text(errors="replace")


def wait_for(
    predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float, poll: float = 0.2, log: Path | None = None
) -> None:
    """Poll ``predicate`` until true; AssertionError (with ``log``'s tail) if the process ends first or
    ``timeout`` passes."""
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited with {proc.returncode} before the awaited state:\n{tail(log)}")
        if time.monotonic() > end:
            kill(proc, signal.SIGKILL)
            raise AssertionError(f"awaited state not reached in {timeout:.0f} s:\n{tail(log)}")
        time.sleep(poll)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc), parents first.

    torchrun's agent may start each rank in a session of its own, so signalling the launcher's
    process group does not reach the ranks; the tree is collected while the parent links exist.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 120) -> int:
    """Stop a started launcher with ``sig``; wait until it and every process below it are gone; its exit code.

    SIGKILL goes to every process of the tree at once (a crash, an OOM kill). Any other signal goes
    to the launcher alone, as a user's ``kill PID`` or Ctrl-C does: torchrun's agent forwards it to
    the ranks (SIGTERM = pre-emption: they checkpoint at the next step boundary and exit), and
    helper processes of the ranks (e.g. wandb's service) are left to their ranks. Stragglers get
    SIGKILL after ``timeout`` seconds.
    """
    tree = [proc.pid, *descendants(proc.pid)]
    _signal(tree if sig == signal.SIGKILL else tree[:1], sig)
    end = time.monotonic() + timeout
    while any(_alive(p) for p in tree[1:]) or proc.poll() is None:
        if time.monotonic() > end:
            _signal(tree, signal.SIGKILL)
            end = time.monotonic() + 30
        time.sleep(0.1)
    return proc.wait()


def finished_steps(run_dir: Path) -> list[int]:
    """Steps of the finished (``COMPLETE``-marked) checkpoints in ``run_dir``, oldest first."""
    from common.train_state import COMPLETE, list_steps

    return [s for s, p in list_steps(run_dir) if (p / COMPLETE).is_file()]


def newest_step(run_dir: Path) -> int | None:
    steps = finished_steps(run_dir)
    return steps[-1] if steps else None


def export(app: str, run_dir: Path, out: Path, log: Path, extra: Iterable[str] = (), timeout: float = 300) -> str:
    """``python launch/export_checkpoint.py app=APP run_dir=RUN out=OUT``; asserts exit 0, returns output."""
    code, text = run(
        "launch/export_checkpoint.py", [f"app={app}", f"run_dir={run_dir}", f"out={out}", *extra], log, timeout
    )
    assert code == 0, f"export failed ({code}):\n{text[-4000:]}"
    return text


def tail(log: Path | None, chars: int = 4000) -> str:
    if log is None:
        return "(no log)"
    try:
        return Path(log).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
