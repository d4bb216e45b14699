"""Make an (HR, LR) pair folder from HR images with a degradation preset.

    python launch/degrade.py hr_dir=DIR out_dir=DIR degradation=realesrgan seed=0 [crop=512]

Writes out_dir/HR/, out_dir/LR/ (same names, LR exactly 1/scale of HR) and out_dir/params.jsonl;
out_dir may not be, contain or lie inside hr_dir. Keys and their meaning: DegradeConfig in
common/degradation/folder.py. Exit codes: 0 all done, 3 done but unreadable inputs were skipped
(each named in the log), 2 a user error (one line; ARSR_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import run_app  # noqa: E402  (also registers the shared config search path)
from common.degradation.folder import DegradeConfig, degrade_folder  # noqa: E402
from common.paths import exit_code  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return run_app("common", "degrade", DegradeConfig, degrade_folder, argv)


if __name__ == "__main__":
    sys.exit(exit_code(main()))
