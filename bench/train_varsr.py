"""Training throughput of VARSR: samples/s and peak memory per configuration, as a Markdown table.

    python bench/train_varsr.py [--steps 5] [--cpu-only]

Rows: the tiny model at 96 px on CPU (fp32 and bf16 autocast); on CUDA also VAR-d24 at 512 px
(bf16 autocast, batch 4 per GPU as in the official recipe, with and without activation
checkpointing). Weights are random (tokenizer too): throughput does not depend on their values.
Peak memory: CUDA ``max_memory_allocated``; CPU the process's peak RSS (includes Python and torch).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common.logging import markdown_table  # noqa: E402
from varsr.config import DataConfig, SourceConfig, tiny_train_config  # noqa: E402
from varsr.model.config import model_config  # noqa: E402
from varsr.train import Trainer  # noqa: E402


def _cases(cuda: bool) -> list[dict]:
    cases = [
        dict(name="tiny 96px", device="cpu", size="tiny", dtype="fp32", crop=96, batch=2, ac=False),
        dict(name="tiny 96px", device="cpu", size="tiny", dtype="bf16", crop=96, batch=2, ac=False),
    ]
    if cuda:
        cases += [
            dict(name="d24 512px", device="cuda", size="d24", dtype="bf16", crop=512, batch=4, ac=False),
            dict(name="d24 512px", device="cuda", size="d24", dtype="bf16", crop=512, batch=4, ac=True),
        ]
    return cases


def bench_case(case: dict, steps: int, workdir: Path) -> dict:
    cfg = tiny_train_config(str(workdir / f"{case['size']}_{case['dtype']}_{case['ac']}"))
    cfg.run.device = case["device"]
    cfg.checkpoint.resume = False
    cfg.model = model_config(case["size"])
    big = case["crop"] >= 512
    cfg.data = DataConfig(
        sources=[SourceConfig(kind="bundled", resize_shorter_to=640 if big else 120)],
        crop_size=case["crop"],
        resize_shorter_to=640 if big else 120,
        batch_size=case["batch"],
        num_workers=4 if big else 0,
        lq_mode="degrade",
    )
    cfg.precision.dtype = case["dtype"]
    cfg.parallel.activation_checkpointing = case["ac"]
    cfg.schedule.max_steps = steps + 2
    trainer = Trainer(cfg)
    batches = iter(trainer.loader)
    for _ in range(2):  # warm-up: allocator, kernels, workers
        trainer.train_step(batches)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**30
    params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    return {
        "config": case["name"],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": case["dtype"],
        "act. ckpt": case["ac"],
        "batch": case["batch"],
        "params (M)": round(params, 2),
        "samples/s": round(case["batch"] * steps / dt, 3),
        "s/step": round(dt / steps, 3),
        "peak mem (GiB)": round(peak, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in _cases(torch.cuda.is_available() and not args.cpu_only):
            rows.append(bench_case(case, args.steps, Path(tmp)))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
