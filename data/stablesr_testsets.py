"""StableSR test sets (DIV2K-Val, RealSR, DRealSR) into ``<out>/<set>/{HR,LR}`` with identical names.

Download (not done here): ``StableSR_testsets.zip`` (3,055,396,861 B, S-Lab License 1.0) from
the Hugging Face dataset ``Iceclear/StableSR-TestSets``; unzip it. RealSR (100 pairs, LR names
like ``Canon_001_LR4.png``) and DRealSR (93 pairs, ``Canon_10_x1.png`` style) name HR and LR
files differently; VARSR's test loader and our ``evaluate_folders`` pair by identical names, so
this script strips the _HR/_LR4/_x1/_x4 suffixes and writes matched names (common.md §2.3).

    python data/stablesr_testsets.py --set RealSR --hr <dir> --lr <dir> --out /data/testsets
    python data/stablesr_testsets.py --set DRealSR --hr <dir> --lr <dir> --out /data/testsets
    python data/stablesr_testsets.py --set DIV2K-Val --hr <gt dir> --lr <lq dir> --out /data/testsets

The same command prepares OST-Val or any other paired set (``--set OST-Val``; construction of
PURE's OST-Val is undocumented). Evaluate with ``launch/evaluate.py hr_dir=<out>/<set>/HR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.prep import prepare_paired_set  # noqa: E402

EXPECTED = {"RealSR": 100, "DRealSR": 93, "DIV2K-Val": 3000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, help="output set name (RealSR, DRealSR, DIV2K-Val, OST-Val, ...)")
    ap.add_argument("--hr", required=True, help="folder of HR/GT images")
    ap.add_argument("--lr", required=True, help="folder of LR/LQ images")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--mode", choices=["copy", "hardlink", "symlink"], default="copy")
    a = ap.parse_args(argv)
    try:
        n = prepare_paired_set(a.hr, a.lr, a.out, a.set, a.scale, EXPECTED.get(a.set), a.mode)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.set}: {n} pairs -> {Path(a.out) / a.set}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
