"""RealLR200 (SeeSR): 200 real low-resolution images, no ground truth.

Download (not done here): ``RealLR200`` from SeeSR's release (https://github.com/cswry/SeeSR,
preset test datasets link in its README). Unpack it anywhere.

    python data/reallr200.py --src /downloads/RealLR200 --out /data/testsets

Writes ``<out>/RealLR200/LR/<name>.png`` for no-reference evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lr_only import run  # noqa: E402  (this folder is on sys.path when run as a script)

if __name__ == "__main__":
    sys.exit(run("RealLR200", 200))
