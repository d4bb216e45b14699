"""PURE section of the GPU benchmark (issue 9): 7B decoding at 512, with and without SJD.

`run(smoke, device)` returns rows {section, metric, value, unit, target, note} that bench/gpu.py
prints in its one table; run alone it prints them itself:

    python bench/gpu_pure.py            # CUDA: PURE 7B, random weights, bf16, one 512 restoration
    python bench/gpu_pure.py --smoke    # tiny model on CPU in seconds (what the test suite runs)

Full size: the 7B in the released layout (random weights, so acceptance rates — and the SJD
gain — differ from the trained model's; the step time and memory do not) is built directly on
the GPU in bf16. The prompt has PURE's 512 shape (BOS + instruction-sized text + 4,164-token LQ
block + 8710) and ends in `<8197><16><16>` (image-only restoration), so each image is exactly
64 x 65 + 1 = 4,161 decoded tokens at README sampling (cfg 0.8, T 0.9, entropy top-k).
Targets (H100, scaled by bandwidth on other GPUs): decode step within 1.5x the bandwidth floor
(`floor_bytes`: the matmul weights, not the embedding table, plus both CFG rows' KV cache at the
image's mean context, over the memory bandwidth), <= 20 s per image with SJD, peak
memory < 24 GB. Each figure is measured in its own try block: a failure becomes a row with
the error instead of losing the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pure.engine  # noqa: E402
from pure.engine import get_engine, release_engines  # noqa: E402
from pure.generate import generate  # noqa: E402
from pure.jacobi import SJDConfig, _SJDRunner, speculative_generate  # noqa: E402
from pure.model import ChameleonForCausalLM, chameleon_config  # noqa: E402
from pure.model.vq import VQModel, vq_config  # noqa: E402
from pure.processors import SamplingConfig  # noqa: E402
from pure.tokenizer import ImageCodeMap, SpecialIds  # noqa: E402
from pure.tokenizer.image import image_block  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_varsr import failure_note, gpu_spec  # noqa: E402  (bench/gpu_varsr.py: GPU table, row notes)

SECTION = "PURE"  # the section name bench/gpu.py prints


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build_model(size: str, device, dtype) -> ChameleonForCausalLM:
    """Random weights created in `dtype` directly on `device` (the 7B never touches the CPU)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            return ChameleonForCausalLM(chameleon_config(size, dropout=0.0)).eval()
    finally:
        torch.set_default_dtype(prev)


def restoration_prompt(grid: int, text_len: int = 26) -> list[int]:
    """BOS + text + an LQ block of (4 grid)^2 random codes + 8710 + `<8197><grid><grid>`."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(16384, (4 * grid, 4 * grid), generator=g)
    text = [9004 + (i * 37) % 500 for i in range(text_len)]
    header = [SpecialIds.IMG_START, SpecialIds.SIZE_BASE + grid, SpecialIds.SIZE_BASE + grid]
    return [SpecialIds.BOS] + text + image_block(codes, ImageCodeMap.synthetic()) + [SpecialIds.EOT] + header


def bandwidth_tbs(device) -> tuple[float, str]:
    """(TB/s, how it was obtained) for the bandwidth floor: the data sheet, else a measured copy."""
    name, _, bw = gpu_spec(torch.device(device))
    if bw:
        return bw, f"{name} data sheet"
    x = torch.empty(2**30, dtype=torch.uint8, device=device)  # read + write 1 GiB, best of 5
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() / best / 1e12, f"{name} measured copy"


def floor_bytes(model, prompt_len: int, n_new: int, bytes_per_value: int = 2) -> tuple[float, float]:
    """(weight bytes, mean KV bytes) one decode step must read at least, for one image with CFG.

    Weights: every matmul weight once per step; the embedding table is not (a step reads one row
    of it). KV: both CFG rows read their keys and values at every layer; averaged over the image,
    the conditional row's context is the prompt plus half the image and the unconditional row's
    (which restarts at the image) half the image. (SDPA over the static cache reads the whole
    allocated capacity instead; FlexAttention skips the unfilled blocks - the rows say which.)"""
    cfg = model.config
    embed = model.model.embed_tokens.weight.numel()
    weights = (model.num_params() - embed) * bytes_per_value
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * bytes_per_value
    mean_ctx = (prompt_len + n_new / 2) + n_new / 2
    return float(weights), float(per_token * mean_ctx)


def _row(metric, value, unit, target="", note="") -> dict:
    return {"section": SECTION, "metric": metric, "value": value, "unit": unit, "target": target, "note": note}


def _guard(rows: list, metric: str, fn, deadline: float | None = None, need_s: float = 0.0) -> None:
    """Append fn()'s rows; on failure one row naming the error (the rest of the table survives);
    skipped with a row saying so when fewer than `need_s` seconds are left before `deadline`."""
    if deadline is not None and time.monotonic() + need_s > deadline:
        rows.append(_row(metric, None, "", note="skipped: time budget spent"))
        return
    try:
        rows.extend(fn())
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        rows.append(_row(metric, None, "", note=failure_note(exc)))


def _free() -> None:
    """Drop the cached engine and the compiled graphs that still point at its KV cache (CUDA
    graph pools included), so the next part's peak memory is its own."""
    release_engines()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def decode_step_ms(model, prompt, sampling, image_mask, max_new: int, n_steps: int, compile: bool, device) -> float:
    """Mean time of the one-token step (all CFG rows in one forward), after warm-up. The engine
    (compiled step, KV cache) is the one `generate` then reuses for the same shapes."""
    engine = get_engine(model, [prompt], sampling, image_mask, max_new, SpecialIds.IMG_END, compile=compile)
    S, _, _ = engine.start([prompt], [0])
    for _ in range(3):  # compile / capture the CUDA graph
        S, _, _ = engine.call(engine.ar_step, S)
    _sync(device)
    t = time.perf_counter()
    for _ in range(n_steps):
        S, _, _ = engine.call(engine.ar_step, S)
    _sync(device)
    return (time.perf_counter() - t) / n_steps * 1e3


def warm_sjd(model, prompt, sampling, sjd: SJDConfig, image_mask, max_new: int, compile: bool) -> None:
    """Compile the SJD iteration for the engine `speculative_generate` will reuse."""
    engine = get_engine(
        model, [prompt], sampling, image_mask, max_new, SpecialIds.IMG_END, window=sjd.window, compile=compile
    )
    runner = _SJDRunner(engine, sjd, image_mask.to(engine.device), compile)
    S, _, _ = engine.start([prompt], [0])
    carry = runner.initial(S)
    for _ in range(2):
        S, *carry = engine.call(runner.step, S, *carry)


def time_image(fn, device) -> tuple[float, object, float]:
    """(seconds, output, peak GiB) of one generation."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    sec = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None
    return sec, out, peak


def vq_decode_ms(device, dtype, side: int) -> float:
    torch.manual_seed(0)
    vq = VQModel(vq_config("ds8")).to(device, dtype).eval()
    codes = torch.randint(16384, (1, side // 8, side // 8), device=device)
    with torch.no_grad():
        vq.decode_codes(codes)
        _sync(device)
        t = time.perf_counter()
        vq.decode_codes(codes)
        _sync(device)
    return (time.perf_counter() - t) * 1e3


def run(smoke: bool = False, device: str | torch.device | None = None, deadline: float | None = None) -> list[dict]:
    """The PURE rows. smoke: tiny model, CPU, eager, a 4x4-code image (seconds). `deadline`
    (time.monotonic() value): later parts are skipped, with a row saying so, once it is near."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    threads = torch.get_num_threads()
    if device.type == "cpu" and smoke:
        torch.set_num_threads(1)  # tiny matmuls: one thread is several times faster on a busy box
    try:
        return _run(smoke, device, deadline)
    finally:
        torch.set_num_threads(threads)


def _run(smoke: bool, device: torch.device, deadline: float | None) -> list[dict]:
    cuda = device.type == "cuda"
    if smoke:
        size, grid, dtype, compile, steps, sjd_window = "tiny", 1, torch.float32, False, 4, 4
    else:
        dtype = torch.bfloat16 if cuda else torch.float32
        size, grid, compile, steps, sjd_window = "7b", 16, cuda, 100, 16
    sampling = SamplingConfig(temperature=0.9, cfg=0.8)
    image_mask = ImageCodeMap.synthetic().image_mask()
    prompt = restoration_prompt(grid, text_len=4 if smoke else 26)
    n_new = (4 * grid + 1) * 4 * grid + 1
    model = build_model(size, device, dtype)
    n_params = model.num_params()
    rows: list[dict] = [
        _row(
            "model",
            f"{size} random, {str(dtype).split('.')[-1]}, {device.type}",
            "",
            note=f"{n_params / 1e9:.2f} B params, prompt {len(prompt)}, image {n_new} tokens",
        )
    ]
    floor_ms = None
    if cuda:
        bw, how = bandwidth_tbs(device)
        w_bytes, kv_bytes = floor_bytes(model, len(prompt), n_new)
        floor_ms = (w_bytes + kv_bytes) / (bw * 1e12) * 1e3
        rows.append(
            _row(
                "bandwidth floor per step (weights + mean KV read)",
                round(floor_ms, 2),
                "ms",
                "",
                f"{w_bytes / 1e9:.2f} GB weights + {kv_bytes / 1e9:.2f} GB KV at {bw} TB/s ({how})",
            )
        )
    target_step = f"<= {1.5 * floor_ms:.1f}" if floor_ms else ""

    def step_rows():
        nonlocal compile
        out = []
        try:
            ms = decode_step_ms(model, prompt, sampling, image_mask, n_new, min(steps, n_new - 8), compile, device)
        except Exception as exc:  # noqa: BLE001 - never run on a GPU before: keep measuring, eagerly
            if not compile:
                raise
            out.append(
                _row(
                    "decode step (compiled)",
                    None,
                    "",
                    target_step,
                    f"compile failed, the rest runs eager: {type(exc).__name__}: {str(exc)[:160]}",
                )
            )
            _free()
            compile = False
            ms = decode_step_ms(model, prompt, sampling, image_mask, n_new, min(steps, n_new - 8), compile, device)
        kind = "compiled + CUDA graph" if compile and cuda else ("compiled" if compile else "eager")
        return out + [_row("decode step (batched CFG)", round(ms, 2), "ms", target_step, kind)]

    def ar_rows():  # reuses the engine (and compiled step) of step_rows
        sec, out, peak = time_image(
            lambda: generate(
                model, [prompt], sampling, image_mask, n_new, seed=0, eos_id=SpecialIds.IMG_END, compile=compile
            ),
            device,
        )
        return [
            _row("AR forwards per image", out.forwards, "", "", f"{len(out.tokens[0]) + 1} tokens"),
            _row("AR seconds per image", round(sec, 2), "s", "", "incl. prefill"),
            _row(
                "AR peak memory",
                None if peak is None else round(peak, 2),
                "GiB",
                "< 22.4" if cuda else "",
                "24 GB target",
            ),
        ]

    def sjd_rows():
        cfg = SJDConfig(window=sjd_window, active_from=0, active_until=10**9)
        warm_sjd(model, prompt, sampling, cfg, image_mask, n_new, compile)
        sec, out, peak = time_image(
            lambda: speculative_generate(
                model, [prompt], sampling, cfg, image_mask, n_new, seed=0, eos_id=SpecialIds.IMG_END, compile=compile
            ),
            device,
        )
        return [
            _row("SJD forwards per image", out.forwards, "", "", f"window {sjd_window}, random weights"),
            _row("SJD seconds per image", round(sec, 2), "s", "<= 20" if cuda else "", "H100 target"),
            _row(
                "SJD peak memory",
                None if peak is None else round(peak, 2),
                "GiB",
                "< 22.4" if cuda else "",
                "24 GB target",
            ),
        ]

    need = 0.0 if smoke else 1.0  # smoke: tiny and eager, every part runs whatever the budget
    _guard(rows, "decode step (batched CFG)", step_rows, deadline, 60 * need)
    _guard(rows, "AR seconds per image", ar_rows, deadline, 40 * need)
    _free()
    _guard(rows, "SJD seconds per image", sjd_rows, deadline, 120 * need)
    _free()
    if cuda and compile:  # the decode step with FlexAttention (skips unfilled cache blocks)

        def flex_rows():
            pure.engine.ATTENTION = "flex"
            try:
                ms = decode_step_ms(model, prompt, sampling, image_mask, n_new, min(steps, n_new - 8), True, device)
            finally:
                pure.engine.ATTENTION = "sdpa"
                _free()
            return [_row("decode step, flex attention", round(ms, 2), "ms", target_step, "compiled + CUDA graph")]

        _guard(rows, "decode step, flex attention", flex_rows, deadline, 150)
    if cuda:
        del model
        torch.cuda.empty_cache()
        for dt in (torch.float32, torch.bfloat16):
            name = f"VQ decode 512 ({str(dt).split('.')[-1]})"
            _guard(
                rows,
                name,
                lambda dt=dt, name=name: [_row(name, round(vq_decode_ms(device, dt, 512), 1), "ms")],
                deadline,
                5 * need,
            )
    return rows


def main() -> None:
    from common.logging import report_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (seconds)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write <out>.{md,csv,json}")
    args = ap.parse_args()
    rows = run(args.smoke, args.device)
    report_table(rows, args.out)


if __name__ == "__main__":
    main()
