"""VARSR sections of the one GPU benchmark (bench/gpu.py): sampling and training throughput.

    run(smoke, device, deadline=None) -> list[dict]   # rows: section, metric, value, unit, target, note

Sampling: VARSR d24 at 512, cfg 6, random weights built directly on the device (never on the
host): seconds per image at batch 1 and images/s at batch 16, eager and compiled, FastVAR off/on,
each timed after a warm-up call (which also compiles) and including the VQVAE decode.
Training: one `varsr.train.Trainer` (the real loop: on-device degradation, AdamW, schedule)
at d24 / 512 px / bf16 with the parallel options of `varsr.config.ParallelConfig` (per-block
compile, selective activation checkpointing, fused AdamW on CUDA).  `smoke`: the tiny model on
the CPU, eager only, one timed call each; the numbers then only prove the code runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

# Targets from issue 9, for one H100 (s/image: lower is better; rates: higher is better).
TARGET_S_PER_IMAGE = 0.1
TARGET_S_PER_IMAGE_FASTVAR = 0.06
TARGET_TRAIN_SAMPLES_S = 20.0


# Modules the sections import beyond torch -> the pip package that provides them.
PACKAGES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "PIL": "pillow",
    "yaml": "PyYAML",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "hydra": "hydra-core",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "deepspeed": "deepspeed",
}


def gpu_spec(device: torch.device) -> tuple[str, float | None, float | None]:
    """(device name, dense bf16 peak FLOP/s, memory TB/s) from the data-sheet table in
    `common/devices.py` (one table for the dry runs and this benchmark); None where the GPU is not
    in it, so no MFU or floor is claimed against another GPU's figures."""
    if device.type != "cuda":
        return "CPU", None, None
    from common.devices import DEVICES, device_from_name

    name = torch.cuda.get_device_name(device)
    d = device_from_name(name)
    if d.key not in DEVICES:  # an unknown GPU (the table's generic stand-in)
        return name, None, None
    return name, d.peak_flops, d.hbm_gbs / 1000


def failure_note(e: BaseException) -> str:
    """The note of a row that could not be measured: the missing pip package, or the error."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        pkg = PACKAGES.get(top, top)
        return f"missing package: {pkg} (pip install -r bench/requirements-gpu.txt)"
    return f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def row(section: str, metric: str, value, unit: str, target: str = "", note: str = "") -> dict:
    """One table row (the interface shared with bench/gpu_pure.py)."""
    return {"section": section, "metric": metric, "value": value, "unit": unit, "target": target, "note": note}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def out_of_time(deadline: float | None, need_s: float = 0.0) -> bool:
    return deadline is not None and time.monotonic() + need_s > deadline


def _sampling_cases(smoke: bool) -> list[dict]:
    if smoke:  # compile on CPU takes minutes (inductor C++); covered by tests/varsr/test_generate.py
        return [
            dict(batch=1, fastvar=False, compile=False),
            dict(batch=1, fastvar=True, compile=False),
            dict(batch=2, fastvar=False, compile=False),
        ]
    return [
        dict(batch=1, fastvar=False, compile=False),
        dict(batch=1, fastvar=False, compile=True),
        dict(batch=1, fastvar=True, compile=True),
        dict(batch=16, fastvar=False, compile=True),
        dict(batch=16, fastvar=True, compile=True),
    ]


def _time_sampling(model, vqvae, case: dict, device: torch.device, dtype: str, reps: int) -> tuple[float, float]:
    """Seconds per call (generate + decode) after one warm-up call, and the peak memory in GiB."""
    from varsr.fastvar import FastVARConfig
    from varsr.generate import _autocast, generate_fhat

    S, B = model.cfg.image_size, case["batch"]
    lr = torch.rand(B, 3, S, S, device=device) * 2 - 1
    fv = FastVARConfig(enabled=True) if case["fastvar"] else None
    if model.cfg.num_scales < 10:  # tiny model: prune its two largest scales with tiny keep counts
        fv = FastVARConfig(enabled=True, later_layer_start=0, min_keep=4) if fv else None
    gen = torch.Generator(device).manual_seed(0)

    def once():
        f = generate_fhat(model, vqvae, lr, cfg=6.0, generator=gen, fastvar=fv, dtype=dtype, compile=case["compile"])
        with _autocast(device, dtype):
            return vqvae.decode_fhat(f)

    once()  # warm-up: allocator, cuDNN/cuBLAS plans, and the compiled graphs of every scale
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync(device)
    return (time.perf_counter() - t0) / reps, peak_gib(device)


def sampling(smoke: bool, device: torch.device, deadline: float | None = None) -> list[dict]:
    from varsr.model import build_models

    sec = "VARSR sampling"
    size, dtype = ("tiny", "fp32") if smoke else ("d24", "bf16")
    torch.manual_seed(0)
    with torch.no_grad():
        model, vqvae = build_models(size, device=device)  # random weights, allocated on the device
    model.eval()
    desc = f"{size} {model.cfg.image_size}px cfg 6 {dtype}"
    rows = []
    for case in _sampling_cases(smoke):
        fv = "FastVAR on" if case["fastvar"] else "FastVAR off"
        mode = "compiled" if case["compile"] else "eager"
        name = f"{desc}, batch {case['batch']}, {mode}, {fv}"
        if out_of_time(deadline, 60 if case["compile"] else 15):  # compiling a new batch size takes ~a minute
            rows.append(row(sec, name, None, "", note="skipped: time budget spent"))
            continue
        try:
            dt, peak = _time_sampling(model, vqvae, case, device, dtype, reps=1 if smoke else 3)
        except Exception as e:  # one failing case must not lose the others
            rows.append(row(sec, name, None, "", note=failure_note(e)))
            continue
        mem = "" if peak is None else f"peak {peak:.1f} GiB"
        if case["batch"] == 1:
            target = TARGET_S_PER_IMAGE_FASTVAR if case["fastvar"] else TARGET_S_PER_IMAGE
            rows.append(row(sec, name, round(dt, 4), "s/image", f"<= {target} (H100, compiled)", mem))
        else:
            rows.append(row(sec, name, round(case["batch"] / dt, 2), "images/s", "", mem))
    return rows


def training(smoke: bool, device: torch.device, deadline: float | None = None) -> list[dict]:
    """VARSR training step throughput through the real Trainer (random weights and tokenizer)."""
    from varsr.config import DataConfig, SourceConfig, tiny_train_config
    from varsr.model.config import model_config
    from varsr.train import Trainer

    sec = "VARSR training"
    size, crop, batch, dtype = ("tiny", 96, 2, "fp32") if smoke else ("d24", 512, 8, "bf16")
    steps, warm = (1, 1) if smoke else (5, 2)
    name = f"{size} {crop}px batch {batch} {dtype}" + ("" if smoke else ", compiled blocks, selective AC, fused AdamW")
    if out_of_time(deadline, 60 if not smoke else 0):
        return [row(sec, name, None, "", note="skipped: time budget spent")]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_train_config(str(Path(tmp) / "run"))
        cfg.run.device = device.type
        cfg.checkpoint.resume = False
        cfg.model = model_config(size)
        shorter = 640 if crop >= 512 else 120
        cfg.data = DataConfig(
            sources=[SourceConfig(kind="bundled", resize_shorter_to=shorter)],
            crop_size=crop,
            resize_shorter_to=shorter,
            batch_size=batch,
            num_workers=0 if smoke else 8,
            lq_mode="degrade",
        )
        cfg.precision.dtype = dtype
        if not smoke:
            cfg.parallel.compile = True
            cfg.parallel.activation_checkpointing = "selective"
            cfg.optim.fused = True
        cfg.schedule.max_steps = steps + warm
        trainer = Trainer(cfg)
        batches = iter(trainer.loader)
        for _ in range(warm):  # allocator, compile, loader workers
            trainer.train_step(batches)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batches)
        sync(device)
        dt = time.perf_counter() - t0
    rows = [row(sec, name, round(batch * steps / dt, 3), "samples/s", f">= {TARGET_TRAIN_SAMPLES_S} (H100)")]
    peak = peak_gib(device)
    if peak is not None:
        rows.append(row(sec, f"{name}: peak memory", round(peak, 2), "GiB"))
    return rows


def run(smoke: bool, device: str | torch.device, deadline: float | None = None) -> list[dict]:
    """Both VARSR sections; each fails soft into an error row."""
    device = torch.device(device)
    rows = []
    for fn, sec in ((sampling, "VARSR sampling"), (training, "VARSR training")):
        try:
            rows += fn(smoke, device, deadline)
        except Exception as e:
            rows.append(row(sec, "(section)", None, "", note=failure_note(e)))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
