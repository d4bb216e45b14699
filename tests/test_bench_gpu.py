"""bench/gpu.py --smoke runs every section end to end on the CPU, so the GPU script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    expected = [name for name, _, _ in gpu.PLAN]
    assert sorted(expected) == sorted(gpu.SECTIONS)
    assert sorted(data["sections"]) == sorted(expected)  # every section ran (none skipped by the budget)
    for name, st in data["sections"].items():
        assert st["status"] == "ok", (name, st, [r for r in data["rows"] if r["section"] == name])
    rows = data["rows"]
    assert all(set(r) >= {"section", "metric", "value", "unit", "target"} for r in rows)
    measured = [r for r in rows if isinstance(r["value"], (int, float)) and r["value"] > 0]
    for sec in ("VARSR sampling", "VARSR training", "degradation", "NCCL world of one", "PURE training"):
        assert any(r["section"] == sec for r in measured), sec
    # the printed table is the same data: one Markdown row per JSON row
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| section")]
    assert len(table) == len(rows)
    # targets are printed beside the figures
    assert any("0.1" in str(r["target"]) for r in rows if r["section"] == "VARSR sampling")
