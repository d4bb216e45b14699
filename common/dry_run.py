"""Dry runs: the real code at full size on fake tensors, over a fake process group, without a GPU.

``launch/train_*.py`` and ``launch/sample_*.py`` accept ``dry_run=h100|h200|a100_80|a100_40|rtx4090|<GiB>``
(``nproc=`` sets the simulated world size): each app's ``dry_run.py`` composes nothing itself, it
takes the config exactly as the launcher built it, builds the real model and its real wrapping
(DDP / FSDP2 with the configured mixed precision, activation checkpointing, offload) inside
:func:`simulation`, and runs one real step through :func:`measure`. This module holds the
app-independent parts:

- :func:`simulation`: a ``FakeTensorMode`` (tensors carry shapes, dtypes and devices but no data, so
  7B parameters take no memory) over PyTorch's fake process group of ``world`` ranks as rank 0
  (collectives return at once; every rank of a symmetric wrapping does the same, so one rank is
  the others' figure). The fake tensors live on a CPU mesh: ``fully_shard`` on a ``cuda`` mesh asks
  the CUDA driver for the current device, and a CPU tensor of the same dtype holds the same bytes.
- :class:`DryRunMode`, the dispatch mode the step runs under: it counts FLOPs (torch's FLOP
  formulas, plus the CPU flash-attention kernels they lack), estimates each op's time on the target
  device by the roofline ``max(flops / peak, bytes moved / bandwidth)``, records every collective
  with its bytes, and answers the data-dependent reads a fake tensor cannot (``.item()`` reads 1 --
  an optimizer's step count --, a boolean False -- "anything left to redraw?" in trunc_normal_ --,
  a GradScaler's overflow flag 0, so the step runs;
  a boolean mask selects ``true_fraction`` of its elements -- the app says how many).
- :func:`measure`: peak memory by category from ``torch.distributed._tools``' ``FSDPMemTracker``
  (FSDP2) or ``MemTracker`` (everything else), which follow every storage the step allocates.

Reports, verdicts and the launchers' preflight live in ``common/dry_run_report.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from common.devices import DEVICES, Device

aten = torch.ops.aten
_MODE = None  # the DryRunMode of the active `simulation`

# Memory categories of a report, in display order.
CATEGORIES = ("parameters", "gradients", "optimizer state", "activations", "KV cache", "temporaries")
# torch.distributed._tools category -> ours. FSDP2's all-gather outputs and reduce-scatter inputs are
# transient buffers, as are backward temporaries; inputs (the batch) count as activations.
_TRACKER_MAP = {
    "Parameter": "parameters",
    "Buffer": "parameters",
    "Sharded Param": "parameters",
    "Unsharded Param": "parameters",
    "Gradient": "gradients",
    "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients",
    "Optstate": "optimizer state",
    "OptState": "optimizer state",
    "Activation": "activations",
    "Inputs": "activations",
    "Temp": "temporaries",
    "All Gather": "temporaries",
    "Reduce Scatter": "temporaries",
    "Other": "temporaries",
}
# Categories that live in host memory under FSDP2 CPU offload (the sharded fp32 state).
OFFLOADED = ("Sharded Param", "Sharded Grad", "Optstate", "OptState")


def _sdpa_cpu_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_bwd_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _flop_formulas() -> dict:
    from torch.utils.flop_counter import flop_registry

    table = dict(flop_registry)
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_bwd_flops),
    ):
        if hasattr(aten, name):
            table.setdefault(getattr(aten, name), fn)
    return table


@dataclass
class Traffic:
    """What one simulated step did on one rank."""

    flops: float = 0.0  # executed FLOPs (activation-checkpointing recompute included)
    roofline: dict = field(default_factory=lambda: dict.fromkeys(DEVICES, 0.0))  # device key -> seconds
    collectives: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # kind -> [count, bytes]

    def seconds(self, device: Device) -> float:
        """Sum over ops of max(flops / peak, bytes moved / HBM bandwidth) on ``device`` (a table row, or a
        bare memory size, which has the H100's speeds)."""
        return self.roofline.get(device.key, self.roofline["h100"])

    def link_bytes(self, world: int) -> float:
        """Bytes each rank sends over its link in ring algorithms: (n-1)/n of an all-gather's output /
        a reduce-scatter's input, twice that for an all-reduce, the payload for a broadcast."""
        if world <= 1:
            return 0.0
        frac = (world - 1) / world
        total = 0.0
        for kind, (_, nbytes) in self.collectives.items():
            total += nbytes * (2 * frac if "allreduce" in kind else frac if "broadcast" not in kind else 1.0)
        return total


class DryRunMode(TorchDispatchMode):
    """Counts FLOPs, roofline time and collectives of every op; answers data-dependent reads.

    Must be entered inside the ``FakeTensorMode`` (it then sees each op first). ``true_fraction``:
    the share of elements a boolean mask is assumed to select (``nonzero`` / mask indexing), set by
    the app from what its data holds (e.g. the supervised tokens of a PURE record)."""

    def __init__(self, device: Device, true_fraction: float = 1.0):
        super().__init__()
        self._formulas = _flop_formulas()
        self._found_inf: set[int] = set()  # GradScaler's overflow flags (read as 0)
        self.reset(device, true_fraction)

    def reset(self, device: Device, true_fraction: float = 1.0) -> None:
        """Start counting afresh (a new step) against ``device``."""
        self.device, self.true_fraction = device, float(true_fraction)
        self.traffic = Traffic()

    def _nonzero(self, mask):
        n = int(round(mask.numel() * self.true_fraction))
        return torch.empty((n, mask.dim()), dtype=torch.long, device=mask.device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:  # .item(), bool(), int() of a tensor: no value exists
            if id(args[0]) in self._found_inf:  # GradScaler: no overflow, the optimizer steps
                return 0.0
            # a step count of 1; "any left?" reads False, so rejection loops (trunc_normal_) end
            return False if args[0].dtype == torch.bool else 1
        if func is aten._amp_foreach_non_finite_check_and_unscale_.default:
            self._found_inf.add(id(args[1]))
        if func in (aten.nonzero.default, aten.argwhere.default):
            return self._nonzero(args[0])
        if func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            idx = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    idx.extend(self._nonzero(i).unbind(1))
                else:
                    idx.append(i)
            return func(args[0], idx)
        if func is aten.masked_select.default:
            return torch.empty(int(round(args[1].numel() * self.true_fraction)), dtype=args[0].dtype)
        out = func(*args, **kwargs)
        ns = func.namespace
        if ns == "c10d" or ns == "_c10d_functional":
            t = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
            rec = self.traffic.collectives[func._overloadpacket.__name__.strip("_")]
            rec[0] += 1
            rec[1] += max((x.numel() * x.element_size() for x in t), default=0)
            return out
        if func.is_view or ns != "aten":
            return out
        pkt = func._overloadpacket
        flops = 0
        if pkt in self._formulas:
            flops = self._formulas[pkt](*args, **kwargs, out_val=out)
        elif func in self._formulas:
            flops = self._formulas[func](*args, **kwargs, out_val=out)
        moved = sum(
            x.numel() * x.element_size() for x in tree_flatten((args, kwargs, out))[0] if isinstance(x, torch.Tensor)
        )
        self.traffic.flops += flops
        for key, d in DEVICES.items():
            self.traffic.roofline[key] += max(flops / d.peak_flops, moved / (d.hbm_gbs * 1e9))
        return out


@dataclass
class Measurement:
    """Peak memory of one step by category (bytes), where it lives, and the step's traffic."""

    device_bytes: dict[str, int]  # category -> bytes on the accelerator at its peak
    host_bytes: dict[str, int]  # category -> bytes in host memory (CPU offload) at the same moment
    traffic: Traffic
    wall_s: float  # how long the simulated step took here
    raw: dict[str, int] = field(default_factory=dict)  # the tracker's own categories at the peak

    @property
    def peak(self) -> int:
        return sum(self.device_bytes.values())


def _fake_pg(world: int) -> None:
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        if dist.get_world_size() == world and dist.get_backend() == "fake":
            return
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())


@contextlib.contextmanager
def simulation(world: int = 1, fake: bool = True, group: bool | None = None):
    """Fake tensors over a fake process group of ``world`` ranks (this process is rank 0).

    Yields the ``DistInfo`` the apps' builders take (a CPU device; ``backend`` "fake" when a
    group exists). The process group is destroyed on exit. ``fake=False`` (tests: the same code
    on real CPU tensors, world 1) yields the plain single-process ``DistInfo``."""
    import torch.distributed as dist
    import torch.distributed.device_mesh as dm
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _disable_current_modes

    from common.dist import DistInfo

    if not fake:
        if world > 1:
            raise ValueError("a real (fake=False) simulation runs one process")
        yield DistInfo(0, 1, 0, torch.device("cpu"), None)
        return
    distributed = world > 1 if group is None else bool(group)  # FSDP2 offload shards a world of one too
    if distributed:
        _fake_pg(world)
    info = DistInfo(0, world, 0, torch.device("cpu"), "fake" if distributed else None)
    real_init = dm.init_device_mesh

    def init_mesh(*args, **kwargs):  # a mesh is bookkeeping (its rank map is read back): build it for real
        with _disable_current_modes():
            return real_init(*args, **kwargs)

    dm.init_device_mesh = init_mesh
    global _MODE
    try:
        # The dry-run mode answers data-dependent reads while the model is built too (e.g. trunc_normal_
        # asks whether any value fell outside its bounds); `measure` then counts the step with it.
        with FakeTensorMode(allow_non_fake_inputs=True), DryRunMode(DEVICES["h100"]) as mode:
            _MODE = mode
            yield info
    finally:
        _MODE = None
        dm.init_device_mesh = real_init
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def with_group(world: int, offload: bool) -> bool:
    """Whether a run of this world size has a process group (FSDP2 offload shards a world of one too)."""
    return world > 1 or offload


def measure(
    step,
    model,
    optimizer=None,
    device: Device | None = None,
    true_fraction: float = 1.0,
    offload=False,
    fake=True,
    after=None,
    backward=None,
):
    """Run ``step()`` once under the memory tracker and :class:`DryRunMode`; returns a :class:`Measurement`.

    Tensors that exist before the call (parameters, an optimizer state primed by
    :func:`prime_optimizer`) count in their categories from the start. ``offload``: FSDP2 CPU
    offload, whose sharded parameters, gradients and optimizer state are host memory. ``fake=False``
    measures real tensors (tests compare the two) without answering any data-dependent read.

    ``after()`` (gradient clipping and the optimizer step) runs for its FLOPs, time and collectives
    but outside the memory tracker: on DTensor parameters, DTensor's sharding propagation runs each
    op on fake tensors of the *global* shape, which the tracker would count as a transient full
    copy of every gradient, memory no GPU run allocates. The step's own memory is known in closed
    form: clipping scales the gradients in place and the fused AdamW kernel (what a GPU run uses)
    updates parameters and moments in place; the moments themselves are primed beforehand.
    ``step()`` is the forward part (a sampling call, or a loss); ``backward(step())`` then runs when given."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        tracker = _frozen_ok(FSDPMemTracker)(model, optimizer)
    else:
        tracker = _frozen_ok(MemTracker)()
        tracker.track_external(*[x for x in (model, optimizer) if x is not None])
    # The trackers refuse a root-level module called twice (an "iteration"): a sampling call runs the
    # embedding and decoder once per step, VARSR's loss its tokenizer's codebook once per scale. So the
    # forward part runs as the forward of one parent module; `backward(out)` follows outside it.
    forward = _StepModule(step, model)
    step = (lambda: backward(forward())) if backward is not None else forward
    mode = _MODE if fake and _MODE is not None else DryRunMode(DEVICES["h100"])
    mode.reset(device or DEVICES["h100"], true_fraction)
    enter = fake and _MODE is None  # inside `simulation` the mode is already active
    t0 = time.perf_counter()
    with tracker:
        with mode if enter else contextlib.nullcontext():
            step()
    if after is not None:
        with mode if enter else contextlib.nullcontext():
            after()
    wall = time.perf_counter() - t0
    snap = tracker.get_tracker_snapshot("peak")
    dev_b, host_b, raw = dict.fromkeys(CATEGORIES, 0), dict.fromkeys(CATEGORIES, 0), defaultdict(int)
    for by_kind in snap.values():
        for kind, nbytes in by_kind.items():
            name = getattr(kind, "value", kind)
            if name == "Total":
                continue
            raw[name] += int(nbytes)
            cat = _TRACKER_MAP.get(name, "temporaries")
            (host_b if offload and name in OFFLOADED else dev_b)[cat] += int(nbytes)
    return Measurement(dev_b, host_b, mode.traffic, wall, dict(raw))


def _frozen_ok(tracker_cls):
    """The tracker class, made to skip gradient hooks on frozen modules (e.g. VARSR's VQVAE): torch's
    trackers hook every parameter of a module they see run, and a frozen parameter refuses a hook."""

    class Tracker(tracker_cls):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            frozen = any(not p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and not frozen)

    return Tracker


class _StepModule(torch.nn.Module):
    def __init__(self, fn, model):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self):
        return self.fn()


@torch.no_grad()
def prime_optimizer(optimizer, params, keep_grads: bool = False) -> None:
    """Create the optimizer's state as a previous step would (zero gradients, one ``step``), so the
    measured step sees the steady state: AdamW moments exist while the activations are alive.

    ``keep_grads``: leave zero gradients in place, as a non-first micro-batch of an accumulation
    finds them; otherwise they are freed (``zero_grad(set_to_none=True)``, what the loops do)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()  # inside `simulation`, the dry-run mode answers AdamW's read of its step count
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr
    if not keep_grads:
        optimizer.zero_grad(set_to_none=True)


def nbytes(tensors) -> int:
    """Total storage bytes of an iterable of tensors (DTensors count their local shard)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total
