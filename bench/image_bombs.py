"""Peak memory of the readers on decompression bombs (issue 16), as a Markdown table.

    python bench/image_bombs.py                 # 30000 x 30000 PNGs, 16-bit and 8-bit RGB
    python bench/image_bombs.py --side 12000    # another size

Each bomb is an all-black PNG written in milliseconds (`tests.folder_cases.zero_png`: a 30000^2
16-bit RGB bomb is ~7 MB on disk and 5.4 GB decoded). Every tool runs in its own fresh process
through its real entry point, next to one good image so the run completes: ``degrade``
(`launch/degrade.py`), ``sample_varsr`` (`launch/sample_varsr.py`, tiny model, random weights) and
``web upload`` (the Gradio page's click handler, `webdemo.ui.make_handler`, on a tiny VARSR).
Figures: the process's peak resident set size (``ru_maxrss``) with the bomb in the folder, the same
run without it (imports alone are ~700 MB here: ``import torch`` is 709 MB on the 2-core dev VM),
and the difference, which is what the bomb cost; plus the exit code and the line naming the bomb.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOOLS = ("degrade", "sample_varsr", "web upload")


def _child(tool: str, folder: Path, bomb: Path | None) -> None:
    """Run one tool in this (fresh) process; print {"rc", "line", "rss_mb"} as the last line."""
    import logging

    from tests.folder_cases import load_launcher

    rc, line = 0, ""
    out = folder.parent / f"out_{tool.replace(' ', '_')}"
    try:
        if tool == "degrade":
            res = load_launcher("degrade").main([f"hr_dir={folder}", f"out_dir={out}", "device=cpu", "progress=false"])
            rc = 3 if res["skipped"] else 0
        elif tool == "sample_varsr":
            args = [f"lr_dir={folder}", f"out_dir={out}", "model=tiny", "ckpt=null", "vae_ckpt=null", "metrics=[]"]
            res = load_launcher("sample_varsr").main([*args, "device=cpu"])
            rc = 3 if res["skipped"] else 0
        else:
            import gradio as gr

            from webdemo.host import ModelHost
            from webdemo.ui import make_handler

            host = ModelHost({"varsr": {"tiny": {"model": "tiny", "ckpt": None, "vae_ckpt": None}}}, device="cpu")
            out.mkdir()
            handler = make_handler(host, out, 10 * 2**20)
            handler("varsr", "tiny", str(folder / "good.png"), 6.0, 1.0, 0, "auto", "default", progress=None)
            if bomb is not None:
                try:
                    handler("varsr", "tiny", str(bomb), 6.0, 1.0, 0, "auto", "default", progress=None)
                except gr.Error as e:
                    rc, line = 2, str(e)
    except SystemExit as e:
        rc = int(e.code or 0)
    logging.shutdown()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"rc": rc, "line": line, "rss_mb": round(rss_mb)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=30000)
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "FOLDER", "BOMB"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return _child(a.child[0], Path(a.child[1]), Path(a.child[2]) if a.child[2] != "-" else None)
    import numpy as np
    from PIL import Image

    from common.logging import report_table
    from tests.folder_cases import zero_png

    def run(tool: str, folder: Path, bomb: Path | None) -> tuple[dict, str]:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", tool, str(folder), str(bomb) if bomb else "-"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"ARSR_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    rows = []
    with tempfile.TemporaryDirectory(prefix="arsr_bombs_") as tmp:
        for tool in TOOLS:
            for depth in (None, 16, 8):  # None: the same run without a bomb
                folder = Path(tmp, f"{tool.replace(' ', '_')}_{depth}", "in")
                folder.mkdir(parents=True)
                side = 64 if tool == "degrade" else 8  # degrade skips images under min_size=64
                Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(folder / "good.png")
                bomb = zero_png(folder / "bomb.png", a.side, a.side, depth) if depth else None
                res, stdout = run(tool, folder, bomb)
                if depth is None:
                    base = res["rss_mb"]
                    continue
                said = res["line"] or next((ln for ln in stdout.splitlines() if "skipped" in ln and "bomb" in ln), "")
                rows.append(
                    {
                        "tool": tool,
                        "bomb": f"{a.side}^2 {depth}-bit RGB ({bomb.stat().st_size / 2**20:.1f} MB file)",
                        "peak RSS with bomb (MB)": res["rss_mb"],
                        "without (MB)": base,
                        "added by the bomb (MB)": res["rss_mb"] - base,
                        "exit": res["rc"],
                        "message": said.split("too large: ")[-1][:110],
                    }
                )
    report_table(rows, title=f"Peak memory on {a.side}^2 PNG bombs (whole process, ru_maxrss)")


if __name__ == "__main__":
    main()
