"""CPU linear layers: PyTorch's default (MKL sgemm) vs oneDNN (`common.cpu_linear`), ms per call.

The shapes are VARSR d24's (qkv, proj, fc1, fc2, head) and its refiner's, at row counts from the
small scales (2 CFG rows x 4 tokens) to the last one (2 x 1024).  Prints a Markdown table with the
speed-up and the largest difference between the two results (float rounding only).

    python bench/cpu_linear.py [--threads 1] [--rows 8 162 648 2048] [--out runs/bench/cpu_linear]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import cpu_linear  # noqa: E402
from common.logging import report_table  # noqa: E402

# (name, in_features, out_features, fused activation)
SHAPES = [
    ("d24 qkv", 1536, 4608, None),
    ("d24 proj", 1536, 1536, None),
    ("d24 fc1+gelu", 1536, 6144, "gelu_tanh"),
    ("d24 fc2", 6144, 1536, None),
    ("d24 head", 1536, 4096, None),
    ("refiner fc1+silu", 1024, 1024, "silu"),
    ("refiner adaLN", 1024, 3072, None),
]


def _ms(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, page faults)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="*", default=[8, 162, 648, 2048])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="write <out>.md/.csv/.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for name, k, n, act in SHAPES:
            w, b = torch.randn(n, k) * k**-0.5, torch.randn(n) * 0.1
            for m in a.rows:
                x = torch.randn(m, k)
                with cpu_linear.enabled(False):
                    ref = cpu_linear.linear(x, w, b, act)
                    t_mkl = _ms(lambda x=x, w=w, b=b, act=act: cpu_linear.linear(x, w, b, act), a.reps)
                out = cpu_linear.linear(x, w, b, act)
                t_dnn = _ms(lambda x=x, w=w, b=b, act=act: cpu_linear.linear(x, w, b, act), a.reps)
                rows.append(
                    {
                        "layer": name,
                        "rows": m,
                        "default ms": round(t_mkl, 2),
                        "oneDNN ms": round(t_dnn, 2),
                        "speed-up": round(t_mkl / t_dnn, 2),
                        "max |diff|": f"{(out - ref).abs().max().item():.1e}",
                    }
                )
    title = f"threads={a.threads}, oneDNN path taken: {cpu_linear.uses_onednn(x, w)}"
    return report_table(rows, a.out, title)


if __name__ == "__main__":
    main()
