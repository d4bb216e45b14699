"""PURE training throughput: tokens/s, MFU and peak memory per configuration, as a Markdown table.

    python bench/train_pure.py            # CPU: tiny model; CUDA: the largest 7B-width config that fits
    python bench/train_pure.py --cpu-peak-tflops 0.2 --seq 1024 --steps 5

Synthetic sequences shaped like PURE's (prompt half masked, the answer half supervised), one
process, the same PureLoss + Engine as training (AdamW, clipping, activation checkpointing).
MFU = tokens/s x FLOPs/token (6N + 12*L*C*T, lm_head only on supervised rows; pure.optim.flops_per_token)
/ peak FLOP/s.
On CUDA the 7B width (4096) is tried with 32, 16, 8, 4 layers: full 7B AdamW states (~113 GB)
do not fit one GPU without sharding, so the table says which depth does.
"""

import argparse
import resource
import sys
import time

import torch


def bench_one(mcfg, seq: int, batch: int, steps: int, device, peak_flops: float, ac: bool, amp: bool) -> dict:

    from common.dist import DistInfo
    from pure.config import ParallelConfig, PureOptimConfig
    from pure.losses import PureLoss, supervised_positions
    from pure.model import ChameleonForCausalLM
    from pure.optim import flops_per_token
    from pure.parallelize import build_engine

    torch.manual_seed(0)
    lm = ChameleonForCausalLM(mcfg).to(device)
    root = PureLoss(lm).to(device)
    dist = DistInfo(0, 1, 0, device, None)
    par = ParallelConfig(backend="none", activation_checkpointing=ac)
    eng = build_engine(root, lm, PureOptimConfig(), par, dist, batch)
    ids = torch.randint(4, 8196, (batch, seq), device=device)
    lab = ids.clone()
    lab[:, : seq // 2] = -100
    own, nxt = supervised_positions(lab)
    head = float((own | nxt).float().mean())  # lm_head runs on these rows only
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):  # first step is warm-up (allocator, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = eng.forward(ids, lab)
        eng.backward(loss)
        eng.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    dt = sum(times) / len(times)
    tps = batch * seq / dt
    n = sum(p.numel() for p in lm.parameters())
    mem = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "layers": mcfg.num_hidden_layers,
        "hidden": mcfg.hidden_size,
        "params_M": round(n / 1e6, 1),
        "seq": seq,
        "batch": batch,
        "act_ckpt": ac,
        "precision": "bf16 autocast" if amp else "fp32",
        "step_s": round(dt, 3),
        "tokens_per_s": round(tps, 1),
        "MFU": round(tps * flops_per_token(mcfg, seq, head_fraction=head) / peak_flops, 4),
        "peak_mem_GiB": round(mem, 2) if device.type == "cuda" else f"{mem:.2f} (max RSS)",
    }


def main(argv=None) -> list[dict]:
    from common.logging import report_table
    from pure.model import chameleon_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: 512 CPU, 8448 CUDA)")
    ap.add_argument("--cpu-peak-tflops", type=float, default=0.1, help="CPU peak for MFU (2 AVX2 cores fp32 ~0.1)")
    ap.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    ap.add_argument("--out", default="runs/bench/train_pure")
    ap.add_argument("--cpu-only", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    cpu = torch.device("cpu")
    seq = a.seq or 512
    for ac in (False, True):
        rows.append(bench_one(chameleon_config("tiny"), seq, 1, a.steps, cpu, a.cpu_peak_tflops * 1e12, ac, False))
    if torch.cuda.is_available() and not a.cpu_only:
        dev = torch.device("cuda")
        for layers in (32, 16, 8, 4):
            try:
                cfg = chameleon_config("7b", num_hidden_layers=layers, dropout=0.05)
                rows.append(bench_one(cfg, a.seq or 8448, 1, a.steps, dev, a.gpu_peak_tflops * 1e12, True, True))
                break  # the largest that fits
            except torch.OutOfMemoryError:
                rows.append(
                    {"device": torch.cuda.get_device_name(), "layers": layers, "hidden": 4096, "tokens_per_s": "OOM"}
                )
            finally:
                torch.cuda.empty_cache()
    return report_table(rows, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
