"""RealLQ250 (PURE Table 3): 250 real low-quality images, no ground truth.

Download (not done here): the set used by PURE's Table 3 (distributed with DreamClear's /
PURE's evaluation material; origin not verified here, common.md §2.4). Unpack it anywhere.

    python data/reallq250.py --src /downloads/RealLQ250 --out /data/testsets

Writes ``<out>/RealLQ250/LR/<name>.png``; evaluate with no-reference metrics:
``launch/evaluate.py sr_dir=<outputs> metrics=nr out=...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lr_only import run  # noqa: E402  (this folder is on sys.path when run as a script)

if __name__ == "__main__":
    sys.exit(run("RealLQ250", 250))
