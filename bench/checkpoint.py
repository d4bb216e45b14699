"""Checkpoint save/load time and per-rank peak memory: consolidated (full) vs sharded (DCP), as a Markdown table.

    python bench/checkpoint.py                         # 2 gloo ranks, FSDP2 MLP of 24 x 2048^2 (~100M params)
    python bench/checkpoint.py --hidden 1024 --layers 12 --json out.json --check   # what the tests run

Model: a plain MLP (``--layers`` Linear(hidden, hidden)) with AdamW state after one step, wrapped
with FSDP2 per layer on ``--world`` CPU ranks (gloo). "full" is the former path: every rank joins a
full-state-dict gather, rank 0 writes one file, every rank reads the whole file and keeps its shard.
"sharded" is ``common.train_state``: DCP, each rank writes and reads only its own shards.
Peak memory is the largest growth of each rank's resident set over its value before the operation
(``common.peakmem``, 1 ms RSS sampling), so it counts what the operation itself allocates.
``--check`` also resumes the sharded checkpoint in one process and compares every weight and Adam
moment with the gathered originals (the test uses it for FSDP2 2 -> 1 and DDP 2 -> 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(hidden: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])


def _step(model, opt, hidden: int) -> None:
    g = torch.Generator().manual_seed(1)
    model(torch.randn(4, hidden, generator=g)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _measure(fn):
    from common.peakmem import PeakMemory

    gc.collect()
    t0 = time.perf_counter()
    with PeakMemory("cpu") as pm:
        fn()
    return time.perf_counter() - t0, pm.peak_delta


def _full_paths(model, opt, path: Path, rank: int):
    """The consolidated path this repo used before DCP (gather to rank 0 / everyone reads the file)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    from common.checkpoint import atomic_save, safe_load
    from common.dist import barrier

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def save():
        msd, osd = get_state_dict(model, opt, options=opts)
        if rank == 0:
            atomic_save({"model": msd, "optim": osd}, path)
        barrier()

    def load():
        st = safe_load(path)
        set_state_dict(model, opt, model_state_dict=st["model"], optim_state_dict=st["optim"], options=opts)

    return save, load


def worker(rank: int, world: int, port: int, args, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from common.dist import barrier, destroy_distributed, init_distributed
    from common.train_state import TrainState, step_dir

    init_distributed("cpu")
    model = build(args.hidden, args.layers)
    if args.strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, opt, args.hidden)
    root = Path(out_dir)
    ts = TrainState(root / "run", model, opt, keep=0, async_save=args.async_save)

    def save():  # with --async-save: staging returns first, wait() publishes the step directory
        ts.save(1)
        ts.wait()

    res = {"rank": rank}
    res["sharded_save_s"], res["sharded_save_peak"] = _measure(save)
    res["sharded_load_s"], res["sharded_load_peak"] = _measure(lambda: ts.load(step_dir(root / "run", 1)))
    if not args.check:
        save, load = _full_paths(model, opt, root / "full.pt", rank)
        res["full_save_s"], res["full_save_peak"] = _measure(save)
        barrier()
        res["full_load_s"], res["full_load_peak"] = _measure(load)
    else:  # reference values for the 1-process resume check (gathered after the measurements)
        ref = {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()
        }
        moms = {
            n: (opt.state[p]["exp_avg"].full_tensor() if args.strategy == "fsdp2" else opt.state[p]["exp_avg"])
            for n, p in model.named_parameters()
        }
        if rank == 0:
            torch.save({"params": ref, "exp_avg": moms}, root / "reference.pt")
    barrier()
    (root / f"rank{rank}.json").write_text(json.dumps(res))
    destroy_distributed()


def check_one_process_resume(out_dir: Path, args) -> bool:
    """Resume the 2-rank sharded checkpoint in one plain process; compare weights and Adam moments."""
    from common.train_state import TrainState

    model = build(args.hidden, args.layers)
    for p in model.parameters():  # a different start: everything must come from the checkpoint
        torch.nn.init.zeros_(p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    got = TrainState(out_dir / "run", model, opt).resume()
    ref = torch.load(out_dir / "reference.pt", weights_only=True)
    prefix = "module." if args.strategy == "ddp" else ""
    ok = got is not None and got.step == 1 and got.rng is None  # another world size: streams not continued
    for n, p in model.named_parameters():
        ok &= torch.equal(p.detach(), ref["params"][prefix + n])
        ok &= torch.equal(opt.state[p]["exp_avg"], ref["exp_avg"][prefix + n])
    return bool(ok)


def run(args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_ckpt_"))
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(args.world, port, args, str(out)), nprocs=args.world, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.world)]
    n_params = args.layers * (args.hidden * args.hidden + args.hidden)
    step = out / "run" / "checkpoints" / "step_00000001"
    files = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file())
    result = {
        "ranks": ranks,
        "model_optim_bytes": 3 * 4 * n_params,
        "files": files,
        "shard_bytes": {p.name: p.stat().st_size for p in (step / "state").glob("*.distcp")},
        "checkpoint_bytes": sum(p.stat().st_size for p in step.rglob("*") if p.is_file()),
    }
    if args.check:
        result["one_process_resume_ok"] = check_one_process_resume(out, args)
    return result


def table(res: dict, args) -> str:
    mib = 2**20
    rows = ["| path | rank | save s | load s | save peak MiB | load peak MiB |", "|---|---|---|---|---|---|"]
    for kind in ("full", "sharded"):
        for r in res["ranks"]:
            if f"{kind}_save_s" in r:
                rows.append(
                    f"| {kind} | {r['rank']} | {r[f'{kind}_save_s']:.2f} | {r[f'{kind}_load_s']:.2f} | "
                    f"{r[f'{kind}_save_peak'] / mib:.0f} | {r[f'{kind}_load_peak'] / mib:.0f} |"
                )
    head = (
        f"{args.strategy} MLP {args.layers} x {args.hidden}^2 on {args.world} CPU ranks: model + AdamW state "
        f"{res['model_optim_bytes'] / mib:.0f} MiB; sharded checkpoint {res['checkpoint_bytes'] / mib:.0f} MiB "
        f"in {len(res['shard_bytes'])} shard files\n\n"
    )
    return head + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--strategy", choices=["fsdp2", "ddp"], default="fsdp2")
    ap.add_argument("--out", default=None, help="working directory (default: a new temp dir)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--check", action="store_true", help="skip the full path; verify a 1-process resume")
    ap.add_argument("--async-save", action="store_true", help="sharded path with checkpoint.async_save")
    args = ap.parse_args()
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(table(res, args))


if __name__ == "__main__":
    main()
