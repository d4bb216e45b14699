"""Peak-memory measurement for tests and bench scripts (CPU resident set size or CUDA allocator).

`PeakMemory` is a context manager: on CUDA it resets and reads `torch.cuda.max_memory_allocated`;
on CPU a daemon thread samples the process resident set size (`/proc/self/statm`, falling back to
`resource.getrusage`, whose maximum cannot be reset) every `interval` seconds and keeps the largest
value.  `peak_delta` is the growth over the RSS at entry, i.e. what the measured code added on top of
what was already resident.  Sampling can miss a spike shorter than the interval; large tensors take
longer than a millisecond to fill, so the figure is a good (slightly low) estimate of the peak.
glibc raises its mmap threshold after large frees, after which freed tensors stay in the heap and
keep counting as resident; `PeakMemory` pins the threshold (128 KiB, glibc's default) so that
big buffers are mmapped and given back on free, and RSS follows live memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def pin_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """mallopt(M_MMAP_THRESHOLD): allocations above nbytes are mmapped and returned when freed."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, nbytes))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to pin
        return False


def rss_bytes() -> int:
    """Current resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # no procfs (macOS): lifetime maximum, the best available figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """`with PeakMemory(device) as pm: ...` then `pm.peak_delta` / `pm.peak` in bytes."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.001):
        self.device = torch.device(device)
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_delta(self) -> int:
        return max(0, self.peak - self.start)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.peak = torch.cuda.memory_allocated(self.device)
            return self
        pin_mmap_threshold()
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
