"""FFHQ10k (training faces): the first 10,000 FFHQ images in sorted order, resized once to 512.

Download (not done here): FFHQ from NVIDIA (https://github.com/NVlabs/ffhq-dataset), the
``images1024x1024`` folder (70,000 aligned 1024x1024 PNGs in folders of 1,000, ``00000/00000.png``
...; licence CC BY-NC-SA 4.0 [unverified]). "FFHQ10k" = images 00000-09999 (SeeSR ``num_face``).
A 512 random crop of a 1024 face is only part of a face, so we resize 1024 -> 512 (LANCZOS)
once and say so in the data card (common.md §2.2).

    python data/ffhq.py --root /data/ffhq/images1024x1024 --out /data/ffhq512 [--n 10000] [--size 512]

Writes ``<out>/<same relative path>.png`` and ``<out>/manifest.csv``; re-running skips done files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.prep import resize_folder  # noqa: E402
from common.data.sources import FFHQ10K, write_manifest  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="FFHQ images1024x1024 folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=FFHQ10K, help="first N sorted images (10,000 = FFHQ10k)")
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args(argv)
    rel = resize_folder(a.root, a.out, a.size, limit=a.n)
    out = write_manifest([(r, 0) for r in rel], Path(a.out) / "manifest.csv")
    print(f"{len(rel)} faces at {a.size}px -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
