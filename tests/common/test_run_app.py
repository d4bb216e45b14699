"""`common.config.run_app`: compose per rank, or @hydra.main for -m sweeps (submitit uses this path)."""

import json
import subprocess
import sys
import textwrap


def _script(tmp_path) -> str:
    return textwrap.dedent(f"""
        import json, sys
        from common.config import run_app
        from varsr.config import VARSRTrainConfig, register_configs

        register_configs()

        def job(cfg):
            with open({str(tmp_path / "seen.jsonl")!r}, "a") as f:
                f.write(json.dumps({{"lr": cfg.optim.lr, "model_depth": cfg.model.depth}}) + "\\n")

        run_app("varsr", "train", VARSRTrainConfig, job)
    """)


def test_plain_call_composes_and_validates(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", _script(tmp_path), "+exp=quick", "optim.lr=0.002"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert rows == [{"lr": 0.002, "model_depth": 2}]


def test_multirun_sweeps_through_hydra_main(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _script(tmp_path),
            "-m",
            "+exp=quick",
            "optim.lr=0.001,0.003",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert sorted(r["lr"] for r in rows) == [0.001, 0.003]
    assert (tmp_path / "sweep" / "multirun.yaml").exists()


def test_bad_override_is_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", _script(tmp_path), "+exp=quick", "optim.lrr=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: ") and "Traceback" not in res.stderr
