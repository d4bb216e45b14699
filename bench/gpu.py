"""The one GPU benchmark (issue 9): every speed target of the project in one Markdown table.

    python bench/gpu.py [--out runs/bench/gpu.json] [--budget-s 420] [--smoke] [--only SECTION ...]
    make bench-gpu

Random weights in the official full-size layouts, built directly on the GPU.  Sections (each
fails soft: its row shows the error and the table is still printed and written):
  VARSR sampling / training  - bench/gpu_varsr.py (d24, 512 px, cfg 6, FastVAR off/on)
  PURE                       - bench/gpu_pure.py (7B decode step, SJD, peak memory)
  PURE training              - largest depth of the 7B width that fits: tokens/s, MFU
  degradation                - common.degradation on the GPU, 512 px, batch 32
  NCCL world of one          - a few steps through DDP, FSDP2 and DeepSpeed ZeRO-3 (skipped with the
                               reason when deepspeed is not importable)
Targets are for one H100 SXM; on another GPU scale them by its memory bandwidth (sampling,
decode) or dense bf16 FLOP/s (training) - the header names the GPU and the peak figures used
(`gpu_varsr.GPU_SPECS`).  A time budget keeps the full run under 8 minutes: each section gets a
share of what is left (SHARE) and checks it before every case, so one slow section cannot starve
the rest; what does not fit is a row saying "skipped: time budget spent".  The table and JSON
are rewritten after every section, so a run killed at its limit still leaves what it measured.
`--smoke` runs every section at tiny sizes on the CPU in well under a minute (the test suite
does, so the script cannot rot); its numbers mean nothing.  Needs python3 + torch only: a section
whose imports are missing is one row naming the pip package, and `bench/requirements-gpu.txt`
lists the wheels that complete a bare GPU machine.  Rows on reduced sizes say so in their names.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from gpu_varsr import failure_note, gpu_spec, out_of_time, row, sync  # noqa: E402

SECTIONS = ("VARSR sampling", "VARSR training", "PURE", "PURE training", "degradation", "NCCL world of one")
TARGET_DEGRADATION = 1000.0
TARGET_PURE_MFU = 0.40


def _error_row(section: str, e: BaseException) -> dict:
    return row(section, "(section)", None, "", note=failure_note(e))


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this GPU (None: unknown GPU, so no MFU is claimed)."""
    if device.type != "cuda":
        return 0.1e12  # two AVX2 cores, fp32: MFU on CPU is only a sanity number
    return gpu_spec(device)[1]


def pure_training(smoke: bool, device: torch.device, deadline: float | None) -> list[dict]:
    """Largest depth of the 7B width that trains on one device (bench/train_pure.py's step)."""
    from train_pure import bench_one

    from pure.model import chameleon_config

    sec, rows = "PURE training", []
    depths, seq = ((2,), 256) if smoke else ((32, 24, 16, 8, 4), 8448)
    for layers in depths:
        if out_of_time(deadline, 45):
            rows.append(row(sec, f"7B width, {layers} layers", None, "", note="skipped: time budget spent"))
            break
        mcfg = chameleon_config("tiny") if smoke else chameleon_config("7b", num_hidden_layers=layers, dropout=0.05)
        name = f"{'tiny' if smoke else '7B width'}, {mcfg.num_hidden_layers} layers, seq {seq}, bf16, full AC"
        peak = peak_flops(device)
        try:
            with torch.device(device):  # weights allocated on the device, never on the host
                r = bench_one(mcfg, seq, 1, 1 if smoke else 3, device, peak or 1.0, True, device.type == "cuda")
        except torch.OutOfMemoryError:
            rows.append(row(sec, name, None, "", note="out of memory; trying fewer layers"))
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row(sec, f"{name}: tokens/s", r["tokens_per_s"], "tokens/s"))
        rows.append(
            row(
                sec,
                f"{name}: MFU",
                r["MFU"] if peak else None,
                "fraction",
                f">= {TARGET_PURE_MFU} (ZeRO-3/FSDP2)",
                f"peak {r['peak_mem_GiB']} GiB" + ("" if peak else "; GPU not in GPU_SPECS: no MFU"),
            )
        )
        break
    return rows


def degradation(smoke: bool, device: torch.device, deadline: float | None) -> list[dict]:
    """Images/s of the batched Real-ESRGAN pipeline on the device (kernels sampled on the host, timed)."""
    import numpy as np

    from common.degradation import Degrader, KernelSampler, collate_kernels, get_preset

    size, batch, reps = (64, 2, 1) if smoke else (512, 32, 5)
    cfg = get_preset("varsr_mild")
    sampler, deg = KernelSampler(cfg), Degrader(cfg)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    gt = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        deg(gt, collate_kernels([sampler(rng) for _ in range(batch)]), gen)  # warm-up: cuFFT/cuDNN plans
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            deg(gt, collate_kernels([sampler(rng) for _ in range(batch)]), gen)
        sync(device)
    ips = batch * reps / (time.perf_counter() - t0)
    return [
        row(
            "degradation",
            f"varsr_mild, {size}px, batch {batch}",
            round(ips, 1),
            "images/s",
            f">= {TARGET_DEGRADATION:.0f}",
        )
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nccl_world_of_one(smoke: bool, device: torch.device, deadline: float | None) -> list[dict]:
    """A 1-rank process group in this process (NCCL on CUDA, gloo on CPU) and 3 steps per wrapper."""
    from common.dist import destroy_distributed, init_distributed

    sec, rows = "NCCL world of one", []
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        info = init_distributed(device.type)
        # The models are the tiny configs: these rows check that each wrapper runs over the backend,
        # they are not throughput figures (the row names say so).
        wrappers = (("tiny VARSR, DDP", _ddp_steps), ("tiny PURE, FSDP2", _fsdp2_steps))
        for name, fn in wrappers + (("tiny PURE, ZeRO-3", _zero3_steps),):
            label = f"{name} ({info.backend}), 3 steps"
            if out_of_time(deadline, 10):
                rows.append(row(sec, label, None, "", note="skipped: time budget spent"))
                continue
            try:
                dt, note = fn(info)
                rows.append(row(sec, label, round(dt, 4), "s/step", "runs", note))
            except Exception as e:
                rows.append(row(sec, label, None, "", "runs", failure_note(e)))
    finally:
        destroy_distributed()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows


def _timed_steps(step, device: torch.device, n: int = 3) -> tuple[float, str]:
    losses = [float(step())]  # warm-up step (also checks the wrapper end to end)
    sync(device)
    t0 = time.perf_counter()
    losses += [float(step()) for _ in range(n - 1)]
    sync(device)
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise FloatingPointError(f"non-finite loss {losses}")
    return (time.perf_counter() - t0) / (n - 1), f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _ddp_steps(info) -> tuple[float, str]:
    """The VARSR tiny model under torch DDP (varsr.parallelize returns a bare model for one rank)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from varsr.losses import varsr_loss
    from varsr.model import build_models

    torch.manual_seed(0)
    model, vqvae = build_models("tiny", device=info.device)
    ddp = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    hr = torch.rand(2, 3, 96, 96, device=info.device) * 2 - 1
    lr = torch.rand(2, 3, 96, 96, device=info.device) * 2 - 1
    label = torch.tensor([0, 1], device=info.device)

    def step():
        loss, _ = varsr_loss(ddp, vqvae, hr, lr, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return _timed_steps(step, info.device)


def _pure_engine_steps(info, backend: str) -> tuple[float, str]:
    from pure.config import ParallelConfig, PureOptimConfig
    from pure.losses import PureLoss
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.parallelize import build_engine

    torch.manual_seed(0)
    with torch.device(info.device):
        lm = ChameleonForCausalLM(chameleon_config("tiny"))
        root = PureLoss(lm)
    bf16 = info.device.type == "cuda"
    par = ParallelConfig(
        backend=backend, zero_stage=3, param_dtype="bf16" if bf16 else "fp32", activation_checkpointing="none"
    )
    eng = build_engine(root, lm, PureOptimConfig(lr=1e-3), par, info, 2)
    ids = torch.randint(4, 8196, (2, 128), device=info.device)
    lab = ids.clone()
    lab[:, :64] = -100

    def step():
        loss, _ = eng.forward(ids, lab)
        eng.backward(loss)
        eng.step()
        return loss.detach()

    return _timed_steps(step, info.device)


def _fsdp2_steps(info) -> tuple[float, str]:
    return _pure_engine_steps(info, "fsdp2")


def _zero3_steps(info) -> tuple[float, str]:
    import deepspeed  # noqa: F401  (ImportError -> the row says skipped, with the reason)

    return _pure_engine_steps(info, "deepspeed")


def pure_decode(smoke: bool, device: torch.device, deadline: float | None) -> list[dict]:
    import gpu_pure  # bench/gpu_pure.py (PURE decode, SJD, peak memory)

    return gpu_pure.run(smoke, str(device), deadline)


def _varsr(part: str):
    def fn(smoke, device, deadline):
        import gpu_varsr

        return getattr(gpu_varsr, part)(smoke, device, deadline)

    return fn


# Fast sections first; (name, function, estimated minimum seconds to start, share of the budget).
PLAN = (
    ("degradation", degradation, 5, 1),
    ("NCCL world of one", nccl_world_of_one, 10, 1),
    ("VARSR sampling", _varsr("sampling"), 30, 4),
    ("PURE", pure_decode, 60, 4),
    ("VARSR training", _varsr("training"), 60, 2),
    ("PURE training", pure_training, 45, 2),
)


def run_all(
    smoke: bool, device: torch.device, budget_s: float, only: list[str] | None = None, on_section=None
) -> tuple[list[dict], dict[str, dict]]:
    """Rows of every section, and per section {status: ok | error | missing | skipped, seconds, rows}.

    Each section's deadline is its share of the time still left (unused time flows to the next),
    and `on_section(rows, status)` runs after each one (main rewrites the table and JSON there)."""
    deadline = time.monotonic() + budget_s
    plan = [p for p in PLAN if not only or p[0] in only]
    rows, status = [], {}
    for i, (name, fn, need, share) in enumerate(plan):
        left = deadline - time.monotonic()
        own = deadline if smoke else time.monotonic() + left * share / sum(p[3] for p in plan[i:])
        if out_of_time(deadline, need):
            rows.append(row(name, "(section)", None, "", note=f"skipped: time budget of {budget_s:.0f} s spent"))
            status[name] = {"status": "skipped", "seconds": 0.0, "rows": 1}
        else:
            t0, state = time.monotonic(), "ok"
            try:
                got = fn(smoke, device, own) or [row(name, "(section)", None, "", note="no rows returned")]
            except Exception as e:  # fail soft: the table keeps every other section
                got = [_error_row(name, e)]
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            notes = [str(r.get("note", "")) for r in got]
            if any(n.startswith("missing package") for n in notes):
                state = "missing"
            elif any(n.startswith(("error", "failed")) for n in notes):
                state = "error"
            rows += got
            status[name] = {"status": state, "seconds": round(time.monotonic() - t0, 1), "rows": len(got)}
        print(f"[bench/gpu] {name}: {status[name]}", file=sys.stderr, flush=True)
        if on_section is not None:
            on_section(rows, status)
    return rows, status


def header(device: torch.device, smoke: bool) -> str:
    name, peak, bw = gpu_spec(device)
    if device.type == "cuda":
        name += f" ({peak / 1e12:.0f} TFLOP/s bf16 dense, {bw} TB/s)" if peak else " (not in GPU_SPECS: no MFU)"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = (
        "smoke run: tiny sizes on the CPU, numbers are meaningless"
        if smoke
        else "targets are for one H100 SXM; scale sampling/decode targets by memory bandwidth and training "
        "targets by dense bf16 FLOP/s for another GPU"
    )
    return f"GPU benchmark on {name}, torch {torch.__version__}, {when}; {note}."


def main(argv=None) -> dict:
    from common.logging import markdown_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/gpu.json", help="JSON file for the table")
    # 420 s leaves a minute for the last started case, CUDA start-up and the table: under 8 minutes in all.
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting sections after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (seconds)")
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    a = ap.parse_args(argv)
    device = torch.device(a.device or ("cpu" if a.smoke or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    head = header(device, a.smoke)
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"header": head, "device": str(device), "smoke": a.smoke, "budget_s": a.budget_s}

    def write(rows: list[dict], status: dict) -> None:
        """Rewrite the JSON (atomically) and the Markdown table beside it with what is measured so far."""
        out.update(sections=dict(status), rows=list(rows))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str))
        os.replace(tmp, path)
        path.with_suffix(".md").write_text(head + "\n\n" + markdown_table(rows) + "\n")

    write([], {})
    rows, status = run_all(a.smoke, device, a.budget_s, a.only, on_section=write)
    print(head + "\n\n" + markdown_table(rows))
    return out


if __name__ == "__main__":
    main()
