"""Dry-run reports and the launchers' preflight (the simulation itself: ``common/dry_run.py``).

A :class:`Report` is one simulated step (or sampling call) of one kind of rank: peak memory by
category against a device, FLOPs and the roofline step time / MFU they imply, collectives with
their bytes and the link bandwidth that hides them, host RAM. ``common.config.run_app`` calls
:func:`dry_run_or_preflight` before it starts any rank:

- ``dry_run=h100|h200|a100_80|a100_40|rtx4090|<GiB>``: print the reports of the full-size run and
  exit (0 when every rank kind fits, 2 with one line naming the figure and the keys to change);
- otherwise, on a CUDA launch with ``preflight=true`` (default), the same estimate made cheap --
  the model built with 1 and 2 layers and extrapolated linearly in depth (every category is
  per-layer state plus a constant) -- refuses a configuration that cannot fit the visible GPU,
  before any weight or batch is loaded. Results are cached per (config, device, world size) in
  ``$ARSR_CACHE_DIR`` (default ``~/.cache/arsr``), so ranks of one job and re-runs compute it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.devices import Device, device_from_name, get_device
from common.dry_run import CATEGORIES, Measurement
from common.paths import UserError

GIB = 2**30
CONTEXT_GIB = 0.75  # CUDA context + cuBLAS/NCCL workspaces outside the caching allocator (typical H100 figure)
SLACK = 0.05  # caching-allocator fragmentation, as a share of the tracked peak
_VERSION = 1  # bump when the estimate changes, so cached preflight verdicts are recomputed


@dataclass
class Report:
    """One rank kind of one simulated run."""

    title: str  # what ran: app, model, wrapping, batch
    device: Device
    world: int
    m: Measurement
    units: float  # tokens or images of one optimizer step (or one sampling call) on this rank
    unit: str  # "token" | "image"
    model_flops: float | None = None  # closed-form model FLOPs of the step on this rank (6N + attention)
    accum: int = 1  # micro-batches per optimizer step: the simulated micro-batch's FLOPs/traffic x accum
    keys: str = ""  # the config keys that change the figure, named when it does not fit
    sources: dict[str, str] = field(default_factory=dict)  # category -> where a figure came from
    host: dict[str, int] = field(default_factory=dict)  # host RAM lines beyond the offloaded categories
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> int:
        """Bytes the device needs: tracked peak + allocator slack + CUDA context."""
        return int(self.m.peak * (1 + SLACK) + CONTEXT_GIB * GIB)

    @property
    def fits(self) -> bool:
        return self.needed <= self.device.memory_bytes

    @property
    def step_s(self) -> float:
        return self.m.traffic.seconds(self.device) * self.accum

    def line(self) -> str:
        """The one-line verdict (the stderr line of a refusal)."""
        need, have = self.needed / GIB, self.device.memory_gib
        if self.fits:
            return f"fits: {self.title} needs {need:.1f} GiB per GPU of {have:.1f} GiB ({self.device.name})"
        return (
            f"does not fit: {self.title} needs {need:.1f} GiB per GPU, the {self.device.name} has {have:.1f} GiB; "
            f"change {self.keys}"
        )

    def markdown(self) -> str:
        d, m = self.device, self.m
        src = {c: self.sources.get(c, "measured (fake tensors)") for c in CATEGORIES}
        rows = [f"### {self.title} -- {d.name}, world {self.world}", "", "| memory at the peak | GiB | source |"]
        rows.append("|---|---:|---|")
        for c in CATEGORIES:
            if m.device_bytes.get(c) or c in ("parameters", "activations"):
                rows.append(f"| {c} | {m.device_bytes.get(c, 0) / GIB:.2f} | {src[c]} |")
        rows.append(
            f"| CUDA context + allocator slack | {(self.needed - m.peak) / GIB:.2f} | assumed: "
            f"{CONTEXT_GIB} GiB + {SLACK:.0%} |"
        )
        verdict = "**fits**" if self.fits else "**does not fit**"
        rows.append(f"| **total** vs {d.memory_gib:.1f} GiB | **{self.needed / GIB:.2f}** | {verdict} |")
        t = m.traffic
        flops = t.flops * self.accum
        rows += ["", "| compute per step (roofline estimate) | value |", "|---|---:|"]
        rows.append(f"| FLOPs executed (recompute included) | {flops:.3e} |")
        rows.append(f"| FLOPs per {self.unit} | {flops / max(self.units, 1):.3e} |")
        if self.model_flops:
            per = self.model_flops * self.accum / max(self.units, 1)
            rows.append(f"| model FLOPs per {self.unit} (6N + attention) | {per:.3e} |")
        rows.append(f"| step time on {d.key} (roofline: max(FLOPs/peak, bytes/HBM) per op) | {self.step_s:.3f} s |")
        if self.model_flops and self.step_s > 0:
            rows.append(f"| MFU implied | {self.model_flops * self.accum / self.step_s / d.peak_flops:.1%} |")
        rows.append(f"| {self.unit}s/s per GPU implied | {self.units / max(self.step_s, 1e-12):.1f} |")
        if t.collectives:
            rows += ["", "| collectives per step | count | GiB |", "|---|---:|---:|"]
            for kind, (n, b) in sorted(t.collectives.items()):
                rows.append(f"| {kind} | {n * self.accum} | {b * self.accum / GIB:.2f} |")
            sent = t.link_bytes(self.world) * self.accum
            need_bw = sent / max(self.step_s, 1e-12) / 1e9
            rows.append(f"| link traffic per GPU (ring) | | {sent / GIB:.2f} |")
            rows.append(
                f"| bandwidth to hide it behind compute | | {need_bw:.1f} GB/s of {d.link_bytes_per_s / 1e9:.0f} |"
            )
        host = {**{f"{c} (CPU offload)": b for c, b in m.host_bytes.items() if b}, **self.host}
        if host:
            rows += ["", "| host RAM | GiB |", "|---|---:|"]
            rows += [f"| {k} | {v / GIB:.2f} |" for k, v in host.items()]
        rows += [f"- {n}" for n in self.notes] + [f"- simulated in {m.wall_s:.1f} s here", "", self.line()]
        return "\n".join(rows)

    def summary(self) -> dict:
        return {
            "title": self.title,
            "device": self.device.key,
            "world": self.world,
            "fits": self.fits,
            "needed_gib": self.needed / GIB,
            "peak_gib": self.m.peak / GIB,
            "step_s": self.step_s,
            "memory_gib": {c: b / GIB for c, b in self.m.device_bytes.items()},
            "wall_s": self.m.wall_s,
        }


@dataclass(frozen=True)
class DryRunApp:
    """What an app gives the launchers: ``simulate(cfg, device, world, layers=None) -> [Report]`` and
    ``depth(cfg) -> int`` (the layer count ``layers`` replaces for the cheap preflight)."""

    simulate: object
    depth: object


def _world(cfg, env=True) -> int:
    import torch

    if env and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    n = str(getattr(cfg, "nproc", "1")).strip().lower()
    if n == "auto":
        return max(1, torch.cuda.device_count())
    return max(1, int(n))


def visible_device(cfg) -> Device | None:
    """The GPU this launch is about to use (None: a CPU run, nothing to check)."""
    import torch

    run = getattr(cfg, "run", None)
    want = getattr(run, "device", None) if run is not None else getattr(cfg, "device", "auto")
    if want == "cpu" or not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return device_from_name(p.name, p.total_memory)


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def extrapolate(r1: Report, r2: Report, depth: int) -> Report:
    """The ``depth``-layer report from the 1- and 2-layer ones: each figure is a + b * layers."""

    def lin(a: dict, b: dict, cast=int) -> dict:
        return {k: max(0, cast(a.get(k, 0) + (depth - 1) * (b.get(k, 0) - a.get(k, 0)))) for k in set(a) | set(b)}

    m1, m2 = r1.m, r2.m
    t = dataclasses.replace(m2.traffic, flops=m1.traffic.flops + (depth - 1) * (m2.traffic.flops - m1.traffic.flops))
    t.roofline = lin(m1.traffic.roofline, m2.traffic.roofline, float)
    m = Measurement(lin(m1.device_bytes, m2.device_bytes), lin(m1.host_bytes, m2.host_bytes), t, m1.wall_s + m2.wall_s)
    return dataclasses.replace(r2, m=m, notes=[*r2.notes, f"extrapolated to {depth} layers from 1 and 2"])


def cheap_reports(cfg, app: DryRunApp, device: Device, world: int) -> list[Report]:
    depth = int(app.depth(cfg))
    if depth <= 2:
        return app.simulate(cfg, device, world)
    one, two = app.simulate(cfg, device, world, layers=1), app.simulate(cfg, device, world, layers=2)
    return [extrapolate(a, b, depth) for a, b in zip(one, two, strict=True)]


def _cache_dir() -> Path:
    return Path(os.environ.get("ARSR_CACHE_DIR") or Path.home() / ".cache" / "arsr") / "preflight"


def preflight(cfg, app: DryRunApp, device: Device, world: int) -> list[dict]:
    """Cached cheap estimate: returns each rank kind's ``{"fits", "line"}``; raises UserError (exit 2,
    one line) when one does not fit. Concurrent ranks wait for the first one's result (file lock)."""
    import fcntl

    key = json.dumps([_VERSION, _plain(cfg), device.key, device.memory_gib, world], sort_keys=True, default=str)
    path = _cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            verdicts = json.loads(path.read_text())
        else:
            verdicts = [{"fits": r.fits, "line": r.line()} for r in cheap_reports(cfg, app, device, world)]
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(verdicts))
            tmp.replace(path)
    for v in verdicts:
        if not v["fits"]:
            raise UserError(f"preflight: {v['line']} (preflight=false skips this check)")
    return verdicts


def dry_run_or_preflight(cfg, app: DryRunApp | None) -> dict | None:
    """The launchers' hook (common.config.run_app): a dry run's result, or None to go on with the run."""
    if app is None:
        return None
    spec = getattr(cfg, "dry_run", None)
    if spec:
        device, world = get_device(spec), _world(cfg, env=False)
        reports = app.simulate(cfg, device, world)
        for r in reports:
            print(r.markdown() + "\n", flush=True)
        bad = [r for r in reports if not r.fits]
        if bad:
            raise UserError(bad[0].line())
        return {"dry_run": [r.summary() for r in reports]}
    device = visible_device(cfg) if getattr(cfg, "preflight", True) else None
    if device is not None:
        preflight(cfg, app, device, _world(cfg))
    return None
