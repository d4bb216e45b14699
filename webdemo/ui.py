"""The Gradio page: pick a model and checkpoint, upload an image, restore it, compare with a slider.

The upload is a plain file (not an image widget) so that the server, not the browser, decodes it:
a broken or oversized file then becomes a message in the page (``gr.Error``) instead of a silent
failure, and the same robust reader as the folder tools (``common.data.io.read_image``) is used.
Requests go through Gradio's queue: one runs at a time (one model instance), at most
``queue_size`` wait, and the rest are told the queue is full.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.io import DEFAULT_MAX_INPUT_PIXELS, BadImageError, ImageTooLarge, read_image, write_image
from common.logging import get_logger
from webdemo.host import APPS, DemoError, ModelHost, Request

log = get_logger("webdemo")
COLOR_FIXES = ["default", "adain", "wavelet", "none"]


def _read_upload(path: str | None, max_bytes: int, max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    if not path:
        raise DemoError("upload an image first")
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise DemoError(f"{p.name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    try:
        return read_image(p, max_pixels)  # the pixel limit is checked from the header, before decoding
    except ImageTooLarge as e:
        raise DemoError(f"{p.name}: {e.reason}") from None
    except BadImageError as e:  # the reason only: the server-side temp path means nothing to the user
        raise DemoError(f"{p.name} is not a readable image ({e.reason})") from None


def _bicubic_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The input enlarged to the output size, so the slider compares like with like."""
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def make_handler(host: ModelHost, out_dir: Path, max_bytes: int):
    """The click handler, separate from the layout so it can be tested without a browser."""
    import gradio as gr

    # Gradio injects a live tracker when the default is a gr.Progress instance (its documented pattern);
    # track_tqdm mirrors the apps' own per-tile / per-image bars (common.logging.progress) in the page.
    live = gr.Progress(track_tqdm=True)

    def restore(app, checkpoint, upload, cfg, temperature, seed, tile, color_fix, progress=live):
        try:
            img = _read_upload(upload, max_bytes, host.max_input_pixels)
            res = host.run(
                Request(
                    app=app,
                    checkpoint=checkpoint,
                    cfg=cfg,
                    temperature=temperature,
                    seed=seed,  # checked with the other values by the app's config rules
                    tile=tile,
                    color_fix=color_fix,
                ),
                img,
                progress=progress,
            )
        except DemoError as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # a bug must not take the server down; the log keeps the traceback
            log.error("request failed:\n%s", traceback.format_exc())
            raise gr.Error(
                f"restoration failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        h, w = res.image.shape[:2]
        stem = Path(upload).stem
        fd, name = tempfile.mkstemp(prefix=f"{stem}_{app}_", suffix=".png", dir=out_dir)
        os.close(fd)
        write_image(name, res.image)  # a fresh file per request: outputs never replace anything
        info = res.info
        text = (info.get("degradation") or "", info.get("caption") or "")
        return ((_bicubic_to(img, (w, h)), res.image), name, text[0], text[1], json.dumps(info, indent=1))

    return restore


def build_ui(host: ModelHost, max_upload_mb: float, out_dir: Path):
    import gradio as gr

    max_bytes = int(max_upload_mb * 2**20)
    handler = make_handler(host, out_dir, max_bytes)
    first_app = next((a for a in APPS if host.choices(a)), "varsr")
    with gr.Blocks(title="arsr: VARSR and PURE super-resolution") as page:
        gr.Markdown(
            "## arsr — real-world x4 super-resolution with VARSR or PURE (or the Real-ESRGAN x4plus baseline)\n"
            f"Upload an image (at most {max_upload_mb:g} MB), choose a model and press **Restore**. "
            "One request runs at a time; the slider compares the bicubic input with the result."
        )
        with gr.Row():
            with gr.Column(scale=1):
                app = gr.Radio(list(APPS), value=first_app, label="model", elem_id="app")
                ckpt = gr.Dropdown(
                    host.choices(first_app), value=host.default(first_app), label="checkpoint", elem_id="checkpoint"
                )
                upload = gr.File(label="input image", file_types=["image"], type="filepath", elem_id="upload")
                cfg = gr.Number(value=6.0, label="cfg (VARSR 6.0, PURE 0.8 in the papers)", elem_id="cfg")
                temperature = gr.Number(value=1.0, label="temperature", elem_id="temperature")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                tile = gr.Radio(["auto", "on", "off"], value="auto", label="tiling", elem_id="tile")
                color_fix = gr.Radio(COLOR_FIXES, value="default", label="colour fix", elem_id="color_fix")
                run = gr.Button("Restore", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="bicubic input | restored", type="numpy", elem_id="slider")
                download = gr.File(label="download the result (PNG)", elem_id="download")
                degradation = gr.Textbox(label="PURE: perceived degradation", elem_id="degradation")
                caption = gr.Textbox(label="PURE: generated caption", elem_id="caption")
                info = gr.Code(label="details", language="json", elem_id="info")

        def on_app(a):
            defaults = {"varsr": (6.0, 1.0), "pure": (0.8, 0.9), "realesrgan": (0.0, 1.0)}[a]  # RE: unused
            return gr.Dropdown(choices=host.choices(a), value=host.default(a)), *defaults

        app.change(on_app, app, [ckpt, cfg, temperature])
        run.click(
            handler,
            [app, ckpt, upload, cfg, temperature, seed, tile, color_fix],
            [slider, download, degradation, caption, info],
            concurrency_limit=1,
        )
    return page


def serve(host: ModelHost, *, server_name: str, port: int, max_upload_mb: float, queue_size: int, block: bool = True):
    """Start the page; returns the running Blocks (``block=False``) for tests."""
    out_dir = Path(tempfile.mkdtemp(prefix="arsr_web_"))
    page = build_ui(host, max_upload_mb, out_dir)
    page.queue(max_size=queue_size, default_concurrency_limit=1)
    page.launch(
        server_name=server_name,
        server_port=port or None,
        max_file_size=int(max_upload_mb * 2**20),
        prevent_thread_lock=not block,
        show_error=True,
        allowed_paths=[str(out_dir)],
        footer_links=[],
    )
    return page
