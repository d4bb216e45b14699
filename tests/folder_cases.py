"""Shared pieces of the folder-safety tests (issue 8): inputs with broken files, hashes, launchers.

Every folder tool (degrade, evaluate, sample_varsr, sample_pure) is checked the same way: an
output folder overlapping the input is refused and the inputs stay byte-identical; broken files
among good ones are skipped and counted (exit 3); user errors are one line on stderr (exit 2).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ("truncated.png", "empty.jpg", "text.png")  # what real folders contain next to good photos


def make_folder(d: Path, good: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """Good PNGs ({stem: (h, w)}) plus a truncated PNG, a zero-byte JPG and a text file named .png."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for stem, (h, w) in good.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(d / f"{stem}.png")
    first = (d / f"{next(iter(good))}.png").read_bytes()
    (d / "truncated.png").write_bytes(first[: len(first) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    return d


def _zeros_zlib(n: int, block: int = 1 << 22) -> bytes:
    """A zlib stream of ``n`` zero bytes in milliseconds: one raw-deflate block ending in a full
    flush (no back-references across it) is repeated, and the Adler-32 of zeros is closed-form."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    full = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    q, r = divmod(n, block)
    rest = c.compress(bytes(r)) + c.flush(zlib.Z_FULL_FLUSH) if r else b""
    return b"\x78\xda" + full * q + rest + c.flush() + struct.pack(">I", ((n % 65521) << 16) | 1)


def zero_png(path: Path, width: int, height: int, bit_depth: int = 8, channels: int = 3) -> Path:
    """A valid all-black PNG (a decompression bomb when large: 30000^2 16-bit RGB is 5 MB on disk)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = height * (1 + width * channels * bit_depth // 8)  # a filter byte + the samples per row
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", _zeros_zlib(raw)) + chunk(b"IEND", b"")
    )
    return path


def tree_hash(d: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``d`` (symlinks followed)."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(d).rglob("*"))
        if p.is_file()
    }


def load_launcher(name: str):
    """`launch/<name>.py` as a module (the launchers are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"launcher_{name}", ROOT / "launch" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def user_error(capsys, fn, *args) -> str:
    """Call a launcher's main in-process; it must exit 2 with exactly one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def run_script(name: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `launch/<name>.py` as a new user would (own process, repository as cwd)."""
    env = {**os.environ, "ARSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ARSR_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "launch" / f"{name}.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]


def overlapping_outputs(inp: Path) -> dict[str, Path]:
    """Output folders that are, are inside, contain, or reach the input through a symlink."""
    link = inp.parent / f"{inp.name}_link"
    if not link.exists():
        link.symlink_to(inp, target_is_directory=True)
    return {"same": inp, "inside": inp / "out", "parent": inp.parent, "symlink": link, "dotdot": inp / ".." / inp.name}


def assert_overlap_refused(capsys, main, args_for, inp: Path) -> None:
    """Every overlapping output folder is a one-line refusal; the input folder stays byte-identical."""
    before = tree_hash(inp)
    for how, out in overlapping_outputs(inp).items():
        line = user_error(capsys, main, args_for(out))
        assert "never overwrite inputs" in line, (how, line)
    assert tree_hash(inp) == before and sorted(p.name for p in inp.iterdir()) == sorted(before)


def assert_process_exit_codes(script: str, args_for, inp: Path, out: Path, produced: list[str]) -> None:
    """As a separate process: out_dir = input folder -> exit 2 with one line; broken files -> exit 3."""
    before = tree_hash(inp)
    assert_one_line(run_script(script, args_for(inp)), "out_dir=", "is the input folder")
    res = run_script(script, args_for(out))
    assert res.returncode == 3, res.stderr[-3000:]
    assert f"{len({Path(p).stem for p in produced if p.endswith('.png')})} done, {len(BROKEN)} skipped" in res.stdout
    assert all(f"skipped {inp / name}" in res.stdout for name in BROKEN)
    assert sorted(p.name for p in out.iterdir()) == sorted([*produced, "run_settings.json"])
    assert tree_hash(inp) == before
