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
    expected = [name for name, *_ in gpu.PLAN]
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


def _bench_module(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize(
    "name, peak, tbs",
    [  # vendor data sheets: dense bf16 tensor TFLOP/s (no sparsity), memory TB/s
        ("NVIDIA H100 80GB HBM3", 989.4e12, 3.35),  # SXM5
        ("NVIDIA H100 PCIe", 756e12, 2.0),
        ("NVIDIA H100 NVL", 835e12, 3.9),
        ("NVIDIA H200", 989.4e12, 4.8),
        ("NVIDIA A100-SXM4-80GB", 312e12, 2.039),
        ("NVIDIA A100-SXM4-40GB", 312e12, 1.555),
        ("NVIDIA A100 80GB PCIe", 312e12, 1.935),
        ("NVIDIA GeForce RTX 4090", 165.2e12, 1.008),
        ("Some Future GPU", None, None),  # unknown: no MFU is claimed
    ],
)
def test_gpu_spec_table(monkeypatch, name, peak, tbs):
    gv = _bench_module("gpu_varsr")
    monkeypatch.setattr(gv.torch.cuda, "get_device_name", lambda device=None: name)
    got = gv.gpu_spec(gv.torch.device("cuda", 0))
    assert got == (name, peak, tbs) if peak is None else (got[0], *map(round, got[1:], (-9, 3))) == (name, peak, tbs)


def test_sections_share_the_budget_and_the_table_is_written_after_each(monkeypatch):
    """Each section gets its share of what is left (unused time flows on), a section missing a
    package is one 'missing' row naming it, and on_section sees every section as it ends."""
    import time

    gpu = _bench_module("gpu")
    got = {}

    def section(name, sleep=0.0, exc=None):
        def fn(smoke, device, deadline):
            got[name] = deadline - time.monotonic()
            time.sleep(sleep)
            if exc:
                raise exc
            return [gpu.row(name, "m", 1.0, "s")]

        return fn

    plan = (
        ("a", section("a"), 0, 1),
        ("b", section("b", exc=ModuleNotFoundError("No module named 'scipy.special'", name="scipy.special")), 0, 1),
        ("c", section("c", sleep=0.2), 0, 2),
        ("d", section("d"), 0, 1),
        ("e", section("e"), 1e9, 1),  # needs more than the whole budget: skipped, with a row
    )
    monkeypatch.setattr(gpu, "PLAN", plan)
    seen = []
    rows, status = gpu.run_all(False, gpu.torch.device("cpu"), 12.0, on_section=lambda r, s: seen.append(dict(s)))
    assert got["a"] == pytest.approx(12.0 / 6, abs=0.1)  # 1 share of 6
    assert got["c"] == pytest.approx(12.0 * 2 / 4, abs=0.2)  # a and b used ~nothing: 2 of the 4 left
    assert got["d"] == pytest.approx((12.0 - 0.2) / 2, abs=0.2)
    assert [s["status"] for s in status.values()] == ["ok", "missing", "ok", "ok", "skipped"]
    assert [len(s) for s in seen] == [1, 2, 3, 4, 5]
    (miss,) = [r for r in rows if r["section"] == "b"]
    assert miss["note"].startswith("missing package: scipy ")
    assert "skipped" in [r for r in rows if r["section"] == "e"][0]["note"]


_BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["gpu.py", "--smoke", "--out", {out!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_bench_on_python_and_torch_alone(tmp_path):
    """Everything but torch unimportable (a bare GPU machine): exit 0, one row per section naming
    the missing package, and the JSON + Markdown written."""
    out = tmp_path / "gpu.json"
    blocked = {"numpy", "scipy", "PIL", "omegaconf", "hydra", "tokenizers", "deepspeed", "cv2", "yaml"}
    code = _BLOCK.format(blocked=blocked, out=str(out), script=str(ROOT / "bench" / "gpu.py"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    gpu = _bench_module("gpu")
    assert sorted(data["sections"]) == sorted(gpu.SECTIONS)
    for name in gpu.SECTIONS:
        rows = [r for r in data["rows"] if r["section"] == name]
        assert rows and all(r["note"].startswith("missing package: ") for r in rows), (name, rows)
        assert data["sections"][name]["status"] == "missing"
    assert out.with_suffix(".md").read_text().count("missing package: numpy") >= 3


def test_decode_floor_reads_matmul_weights_and_the_kv_cache():
    """The bandwidth floor of one CFG decode step: the matmul weights once (not the embedding
    table: a step reads one row of it) plus both rows' K and V at the mean context."""
    gp = _bench_module("gpu_pure")
    model = gp.build_model("tiny", "cpu", gp.torch.float32)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads) == (2, 4, 16)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, gp.torch.nn.Linear))
    weights, kv = gp.floor_bytes(model, prompt_len=100, n_new=50)
    assert weights == pytest.approx(2 * linear, rel=0.01)  # bf16; norms are the rest
    # K and V, 2 layers, 4 heads of 16, bf16 = 512 B per token; cond row: 100 + 25, uncond row: 25
    assert kv == 512 * (125 + 25)


def test_torch_floor_is_the_tested_version_everywhere():
    """pyproject and the Makefile's first install agree on the torch range, and the torch this suite
    runs on is inside it (the floor is the lowest version the suite has passed on)."""
    import re

    import torch

    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    spec = re.search(r'"torch(>=[\d.]+,<[\d.]+)"', pyproject).group(1)
    assert f'"torch{spec}"' in makefile
    lo, hi = (tuple(map(int, v.split("."))) for v in re.findall(r"[\d.]+", spec))
    assert lo <= tuple(map(int, torch.__version__.split("+")[0].split(".")[:2])) < hi
