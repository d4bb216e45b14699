"""Shared command line of the LR-only test-set scripts (reallq250.py, reallr200.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.prep import prepare_lr_only  # noqa: E402


def run(name: str, expected: int, argv=None) -> int:
    ap = argparse.ArgumentParser(description=f"prepare {name} (LR only) from a local copy")
    ap.add_argument("--src", required=True, help=f"unpacked {name} folder")
    ap.add_argument("--out", required=True, help="test-set root; writes <out>/" + name + "/LR")
    ap.add_argument("--mode", choices=["copy", "hardlink", "symlink"], default="copy")
    a = ap.parse_args(argv)
    try:
        n = prepare_lr_only(a.src, a.out, name, expected, a.mode)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{name}: {n} images -> {Path(a.out) / name / 'LR'}")
    return 0
