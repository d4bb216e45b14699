"""The embedded default dataset: scikit-image's six bundled CC0 / public-domain colour photos.

No download: the photos ship inside the scikit-image wheel (astronaut, chelsea, coffee, rocket,
hubble_deep_field, retina; common.md §2.7). Used by the tiny configs, the demo and the tests.

    python data/bundled.py --out data/bundled [--size 512]

Writes ``<out>/HR/<name>.png`` (size x size: centre crops, small photos resized up first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.bundled import BUNDLED, write_bundled_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args(argv)
    out = write_bundled_dataset(a.out, a.size)
    for name, lic in BUNDLED.items():
        print(f"{out / 'HR' / (name + '.png')}  ({lic})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
