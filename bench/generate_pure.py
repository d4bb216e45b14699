"""PURE decoding speed: AR (batched CFG, static KV cache, compiled step) vs speculative Jacobi decoding.

Generates one image block after a prompt ending in `<8197><h><w>` (so an untrained model still
walks the full structure: codes, row ends, end token) and reports tokens/s and forwards per
image. Steps are compiled (CUDA graphs) on CUDA, eager on CPU (--compile). Rows: the tiny
model on CPU (fp32), and on CUDA the largest model that fits (the 7B shape with random weights
in bf16 when memory allows, else a 16-layer cut), both at the real 64x64 grid (4,161 tokens)
unless --grid says otherwise. Weights are random: acceptance rates of a trained model differ,
so the SJD speed-up here is a mechanism check, not PURE's number.
Prints a Markdown table (and writes it with --out).

    python bench/generate_pure.py [--grid 2] [--cuda-grid 16] [--cfg 0.8] [--window 16] [--out runs/bench/generate_pure]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.logging import report_table  # noqa: E402
from pure.generate import generate  # noqa: E402
from pure.jacobi import SJDConfig, speculative_generate  # noqa: E402
from pure.model import ChameleonForCausalLM, chameleon_config  # noqa: E402
from pure.processors import SamplingConfig  # noqa: E402
from pure.tokenizer import SpecialIds  # noqa: E402


def prompt_for(grid: int, prompt_len: int) -> list[int]:
    """BOS + filler text ids + an open image header of grid x grid (32-px units)."""
    filler = [9004 + (i * 37) % 500 for i in range(max(0, prompt_len - 4))]
    return [SpecialIds.BOS] + filler + [SpecialIds.IMG_START, SpecialIds.SIZE_BASE + grid, SpecialIds.SIZE_BASE + grid]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_row(
    name: str,
    model,
    device,
    grid: int,
    prompt_len: int,
    sampling: SamplingConfig,
    window: int,
    seed: int,
    compile: bool | None = None,
):
    prompt = prompt_for(grid, prompt_len)
    n_image = (4 * grid + 1) * 4 * grid + 1  # tokens after <h><w>, end token included
    rows = []
    for method in ("AR", "SJD"):
        _sync(device)
        t0 = time.perf_counter()
        if method == "AR":
            out = generate(model, [prompt], sampling, max_new_tokens=n_image, seed=seed, compile=compile)
        else:
            out = speculative_generate(
                model,
                [prompt],
                sampling,
                SJDConfig(window=window, active_from=0, active_until=10**9),
                max_new_tokens=n_image,
                seed=seed,
                compile=compile,
            )
        _sync(device)
        dt = time.perf_counter() - t0
        n = len(out.tokens[0]) + int(out.finished[0])
        rows.append(
            {
                "model": name,
                "device": str(device),
                "grid": f"{4 * grid}x{4 * grid}",
                "method": method,
                "compiled": bool(compile) if compile is not None else device.type == "cuda",
                "cfg": sampling.cfg,
                "tokens": n,
                "forwards": out.forwards,
                "tokens/forward": round(n / out.forwards, 2),
                "seconds": round(dt, 2),
                "tokens/s": round(n / dt, 1),
            }
        )
    return rows


def cuda_model(device: torch.device):
    """The 7B shape in bf16 if it fits (with KV room), else fewer layers; random weights."""
    free = torch.cuda.mem_get_info(device)[0]
    for layers in (32, 16, 8):
        cfg = chameleon_config("7b", num_hidden_layers=layers, dropout=0.0)
        need = cfg.num_params() * 2 + 12 * 2**30  # weights + KV cache and logits headroom
        if need < free:
            prev = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)  # built in bf16 on the GPU: no fp32 copy anywhere
            try:
                torch.manual_seed(0)
                with torch.device(device):
                    model = ChameleonForCausalLM(cfg).eval()
            finally:
                torch.set_default_dtype(prev)
            return f"7b-shape {layers}L (random)", model
    raise RuntimeError("not enough GPU memory for an 8-layer 7B-shaped model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=2, help="CPU grid in 32-px units (2 -> 8x8 latents, 73 tokens)")
    ap.add_argument("--cuda-grid", type=int, default=16, help="CUDA grid (16 -> 64x64 latents, 4,161 tokens)")
    ap.add_argument("--prompt-len", type=int, default=64, help="CPU prompt length (the real one is ~4.2k)")
    ap.add_argument("--cuda-prompt-len", type=int, default=4190)
    ap.add_argument("--cfg", type=float, default=0.8)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="torch.compile the decode/verify steps (auto: on CUDA only)",
    )
    ap.add_argument("--out", default=None, help="write <out>.{md,csv,json}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sampling = SamplingConfig(temperature=args.temperature, cfg=args.cfg)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    tiny = ChameleonForCausalLM(chameleon_config("tiny")).eval()
    compile = {"auto": None, "on": True, "off": False}[args.compile]
    rows = run_row("tiny (random)", tiny, cpu, args.grid, args.prompt_len, sampling, args.window, args.seed, compile)
    if torch.cuda.is_available() and not args.no_cuda:
        dev = torch.device("cuda")
        name, big = cuda_model(dev)
        # warm-up at the real shapes: compiles the steps and captures the CUDA graphs
        run_row(name, big, dev, args.cuda_grid, args.cuda_prompt_len, sampling, args.window, args.seed, compile)
        rows += run_row(name, big, dev, args.cuda_grid, args.cuda_prompt_len, sampling, args.window, args.seed, compile)
    report_table(rows, args.out)


if __name__ == "__main__":
    main()
