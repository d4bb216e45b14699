"""``torch.compile`` that degrades to eager: a failed compile costs speed, never the run.

Sampling compiles by default on CUDA (PURE's decode step, VARSR's blocks per scale). A machine
without a C compiler, an older torch or Triton, or a graph the installed dynamo cannot capture
then raises inside the first call; :class:`CompiledOrEager` catches exactly the compiler's
errors (never the program's own: those would be raised eagerly too, and an out-of-memory is not
a compile failure), warns once per function, and runs the function eagerly from then on.
Dynamo compiles before it executes, so nothing of the failed call has run twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.logging import get_logger

_WARNED: set[str] = set()


def raise_recompile_limit(n: int) -> None:
    """At least ``n`` compiled versions per code object (``recompile_limit`` since torch 2.7,
    ``cache_size_limit`` before): every static shape is one version, and dynamo's default of 8
    would silently run the rest eagerly."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), n))


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the compiler failed", on this torch version."""
    import torch._dynamo.exc as dexc

    errs: list[type[BaseException]] = [dexc.BackendCompilerFailed, dexc.Unsupported]
    try:
        from torch._inductor.exc import InductorError  # torch >= 2.6

        errs.append(InductorError)
    except ImportError:
        pass
    return tuple(errs)


def _warn(what: str, exc: BaseException) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        get_logger().warning(f"torch.compile of {what} failed ({type(exc).__name__}: {first}); running it eagerly")


class CompiledOrEager:
    """``fn`` compiled with ``compile_kwargs``; on a compiler failure, ``fn`` itself (one warning)."""

    def __init__(self, fn: Callable, what: str, **compile_kwargs):
        self.eager, self.what, self.failed = fn, what, None
        try:
            self.compiled = torch.compile(fn, **compile_kwargs)
        except RuntimeError as exc:  # e.g. dynamo unsupported on this Python version
            self.compiled, self.failed = None, exc
            _warn(what, exc)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except compile_errors() as exc:
                self.failed = exc
                _warn(self.what, exc)
        return self.eager(*args, **kwargs)
