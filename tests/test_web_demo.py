"""The web demo, served on localhost and driven by a real headless Chromium (Playwright).

The server is the real entry point (``launch/web_demo.py``) in a subprocess, pointed at tiny VARSR and
PURE checkpoints written in the official layouts. The browser uploads a bundled photo, runs both models
and reads the result's size from the downloaded PNG (not from anything the test configured); a broken
upload must show a message in the page while the server keeps serving. A screenshot of the page is saved
in the test's output directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


INSTALL = "apt-get install chromium (as root; `make setup` does it where it can)"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def require_browser() -> str:
    """The Chromium to drive. Missing: a skip naming the install command on a developer's machine, a
    failure under CI (``CI=true``, set by .ci/run), where the browser test must run, never skip."""
    path = _chromium()
    if path is not None:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but Chromium is not installed: the web demo test must run in CI; {INSTALL}")
    pytest.skip(f"Chromium not installed; to run the web demo test: {INSTALL}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny VARSR (official trainer layout) and tiny PURE (HF shards + config.json + tokenizer)."""
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import save_hf_shards
    from pure.tokenizer import build_test_tokenizer
    from varsr.model import build_models
    from varsr.official import export_official

    d = tmp_path_factory.mktemp("web_ckpts")
    torch.manual_seed(0)
    model, vqvae = build_models("tiny")
    export_official(model, vqvae, d / "VARSR.pth")
    lm = ChameleonForCausalLM(chameleon_config("tiny"))
    save_hf_shards(lm, d / "pure", max_shard_size="50MB", config=lm.config, dtype=None)
    shutil.copy(build_test_tokenizer(d / "tok"), d / "pure" / "tokenizer.json")
    return d


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    port = _free_port()
    v, p = checkpoints / "VARSR.pth", checkpoints / "pure"
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    cmd = [
        sys.executable,
        "launch/web_demo.py",
        f"port={port}",
        "device=cpu",
        "max_upload_mb=2",
        "+varsr.test.model=tiny",
        f"+varsr.test.ckpt={v}",
        f"+varsr.test.vae_ckpt={v}",
        "+pure.test.model=tiny",
        f"+pure.test.ckpt_dir={p}",
        "+pure.test.vq_ckpt=null",
        "+pure.test.vq_size=tiny",
        "+pure.test.resolution=8",
        "+pure.test.image_only=true",
        "+pure.test.max_new_tokens=30",
    ]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", ARSR_NO_PROGRESS="1")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"web demo exited early:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"web demo did not come up:\n{log.read_text()[-3000:]}")
    yield url, proc, log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _photo(tmp_path: Path) -> tuple[Path, tuple[int, int]]:
    """One bundled CC0 photo, reduced to a small non-square LR (24x16) so the tiny models run in seconds."""
    from common.data.bundled import bundled_photos

    name, img = bundled_photos()[0]
    small = Image.fromarray(img).resize((24, 16), Image.BICUBIC)
    path = tmp_path / f"{name}.png"
    small.save(path)
    return path, small.size


def _upload(page, path: Path) -> None:
    """As a person would: clear any previous file, click the upload area, pick the file."""
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():
        clear.first.click()
    with page.expect_file_chooser() as chooser:
        page.locator("#upload button.upload-container").click()
    chooser.value.set_files(str(path))
    # uploaded once the server's copy is linked under the file's name
    page.locator(f'#upload a[download="{path.name}"]').first.wait_for(timeout=60_000)


def _restore(page, app: str, checkpoint: str, upload: Path, timeout_ms: int = 400_000) -> tuple[int, int]:
    """Pick app + checkpoint, upload, press Restore; return the downloaded result's (width, height)."""
    page.locator("#app").get_by_text(app, exact=True).click()
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name=checkpoint, exact=True).click()
    _upload(page, upload)
    # Messages of earlier requests are marked as seen: only a toast this request raises counts.
    page.evaluate("() => document.querySelectorAll('.toast-body').forEach(t => t.dataset.seen = '1')")
    link = page.locator("#download a[href]")
    previous = link.first.get_attribute("href") if link.count() else ""
    page.locator("#run").click()
    # Done when a new download link appears (every request writes a fresh file); a new error toast
    # instead fails at once with its text.
    page.wait_for_function(
        "(prev) => { const a = document.querySelector('#download a[href]');"
        " return (a && a.getAttribute('href') !== prev && a.href.endsWith('.png'))"
        " || document.querySelector('.toast-body:not([data-seen])'); }",
        arg=previous,
        timeout=timeout_ms,
    )
    toast = page.locator(".toast-body:not([data-seen])")
    if toast.count():
        raise AssertionError(f"the page reported an error: {toast.first.inner_text()}")
    href = link.first.get_attribute("href")
    data = page.request.get(href if href.startswith("http") else page.url.rstrip("/") + "/" + href.lstrip("/")).body()
    return Image.open(BytesIO(data)).size


@pytest.fixture(scope="module")
def chromium():
    return require_browser()  # before `server`: a skip costs no checkpoints and no server start


@pytest.mark.slow
def test_web_demo_in_a_real_browser(chromium, server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, proc, log = server
    photo, (w, h) = _photo(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.locator("#run").wait_for(timeout=60_000)
        try:
            _drive(page, photo, (w, h), broken, proc, log, tmp_path)
        except Exception:
            page.screenshot(path=str(tmp_path / "web_demo_failure.png"), full_page=True)
            print(f"server log:\n{log.read_text()[-4000:]}\nscreenshot: {tmp_path / 'web_demo_failure.png'}")
            raise
        finally:
            browser.close()
    shot = np.asarray(Image.open(tmp_path / "web_demo.png"))
    assert shot.shape[0] > 100 and shot.std() > 1  # a rendered page, not a blank capture
    print(f"screenshots: {tmp_path / 'web_demo.png'} {tmp_path / 'web_demo_error.png'}")


def _drive(page, photo: Path, size: tuple[int, int], broken: Path, proc, log: Path, tmp_path: Path) -> None:
    w, h = size
    assert _restore(page, "varsr", "test", photo) == (4 * w, 4 * h)  # x4, aspect kept
    assert _restore(page, "pure", "test", photo) == (4 * w, 4 * h)  # PURE at x4 too, in tiles
    assert page.locator("#degradation textarea").count() == 1 and page.locator("#caption textarea").count() == 1
    page.screenshot(path=str(tmp_path / "web_demo.png"), full_page=True)

    # A broken upload: a message in the page, and the server still serves the next request.
    _upload(page, broken)
    page.locator("#run").click()
    page.get_by_text("not a readable image").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "web_demo_error.png"), full_page=True)
    assert proc.poll() is None, log.read_text()[-2000:]
    assert _restore(page, "varsr", "test", photo) == (4 * w, 4 * h)


def test_user_errors_are_messages_not_crashes(tmp_path):
    """What the page shows for a missing checkpoint, an oversized upload and too many pixels."""
    from webdemo.host import DemoError, ModelHost, Request
    from webdemo.ui import _read_upload

    host = ModelHost(
        {"varsr": {"gone": {"model": "tiny", "ckpt": str(tmp_path / "nope.pth"), "vae_ckpt": "null"}}},
        device="cpu",
        max_input_pixels=100,
    )
    small = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DemoError, match=r"not on disk \(ckpt=.*nope\.pth\)"):
        host.run(Request("varsr", "gone", 6.0, 1.0), small)
    with pytest.raises(DemoError, match="unknown varsr checkpoint 'other'"):
        host.run(Request("varsr", "other", 6.0, 1.0), small)
    with pytest.raises(DemoError, match="at most 100"):
        host.run(Request("varsr", "gone", 6.0, 1.0), np.zeros((20, 20, 3), np.uint8))
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * 3000)
    with pytest.raises(DemoError, match="the limit is"):
        _read_upload(str(big), max_bytes=2000)
    with pytest.raises(DemoError, match="big.png is not a readable image"):
        _read_upload(str(big), max_bytes=4000)
