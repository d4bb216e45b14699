"""LSDIR (training HR set): build a manifest from a local copy.

Download (not done here): the LSDIR site of ETH Zurich (https://data.vision.ee.ethz.ch/yawli/,
"LSDIR: A Large Scale Dataset for Image Restoration"), the HR training shards
``shard-00.tar.gz`` ... plus ``train.json``; about 125 GB of PNGs, 84,991 training images in
``HR/train/0001000/0000001.png`` ... ``HR/train/0085000/0084991.png`` (common.md §2.1).

    python data/lsdir.py --root /data/LSDIR [--out /data/LSDIR/manifest.csv] [--check]

Uses ``train.json`` when present, otherwise walks ``HR/train``. ``--check`` opens every header
and lists unreadable files (the training loader skips them anyway). Training configs then use
``{root: /data/LSDIR, kind: lsdir}`` or ``{root: <manifest>, kind: manifest}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.io import BadImageError, image_size  # noqa: E402
from common.data.sources import ImageSource, list_source, write_manifest  # noqa: E402

EXPECTED = 84_991


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="LSDIR folder (with HR/train and/or train.json)")
    ap.add_argument("--meta", default=None, help="explicit list file (train.json or text list)")
    ap.add_argument("--out", default=None, help="manifest CSV (default: <root>/manifest.csv)")
    ap.add_argument("--label", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="read every header, report unreadable files")
    a = ap.parse_args(argv)
    items = list_source(ImageSource(a.root, kind="lsdir", meta=a.meta, label=a.label))
    missing = [p for p, _ in items if not os.path.isfile(p)]
    if missing:
        print(f"warning: {len(missing)} listed files are missing, e.g. {missing[:3]}")
    if a.check:
        for p, _ in items:
            try:
                image_size(p)
            except BadImageError as e:
                print(e)
    out = write_manifest(
        [(os.path.relpath(p, a.root), lab) for p, lab in items if os.path.isfile(p)],
        a.out or Path(a.root) / "manifest.csv",
    )
    n = len(items) - len(missing)
    print(f"{n} images -> {out}" + ("" if n == EXPECTED else f" (official train split: {EXPECTED})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
