"""Relative paths written in config files resolve against the repository, not the working directory."""

import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from common.config import compose_config, repo_path

ROOT = Path(__file__).resolve().parents[2]


def test_repo_resolver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repo_path("configs/pure/data/lsdir_ffhq.yaml") == str(ROOT / "configs/pure/data/lsdir_ffhq.yaml")
    assert repo_path("/abs/file.pth") == "/abs/file.pth"
    cfg = OmegaConf.create({"a": "${repo:runs/x}", "b": "${repo:/data/y}"})
    assert (cfg.a, cfg.b) == (str(ROOT / "runs/x"), "/data/y")


def test_shipped_files_named_by_configs_are_found_from_any_cwd(tmp_path, monkeypatch):
    """Every repository file a config names (data YAMLs, DeepSpeed configs) exists, from another cwd."""
    import pure.config  # noqa: F401  (registers the train schema)

    monkeypatch.chdir(tmp_path)
    for overrides in (["+exp=lsdir_ffhq"], ["+exp=zero2"], ["+exp=zero3"]):
        cfg = compose_config("pure", "train", overrides)
        assert cfg.data.meta == str(ROOT / "configs/pure/data/lsdir_ffhq.yaml")
        assert Path(cfg.data.meta).is_file()
        if "zero" in overrides[0]:
            stage = overrides[0][-1]
            assert cfg.parallel.deepspeed_config == str(ROOT / f"configs/pure/deepspeed/zero{stage}.yaml")
            assert Path(cfg.parallel.deepspeed_config).is_file()
    # entries of the data YAML too: the official loader resolves them on reading
    from pure.data import _read_meta

    paths = [m["path"] for m in _read_meta(str(ROOT / "configs/pure/data/lsdir_ffhq.yaml"))]
    assert paths == [str(ROOT / f"data/pure_tokens/{d}/record.json") for d in ("lsdir", "ffhq10k")]


def test_command_line_paths_stay_relative_to_the_working_directory(tmp_path, monkeypatch):
    import pure.config  # noqa: F401

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("pure", "train", ["data.meta=mine.yaml", "run.run_dir=out"])
    assert (cfg.data.meta, cfg.run.run_dir) == ("mine.yaml", "out")


def test_pure_training_started_elsewhere_reads_the_repository_data_config(tmp_path):
    """The README's PURE training command from another directory gets as far as the token files the
    repository's data config lists (absent here), instead of failing to find the data config."""
    cmd = [
        sys.executable,
        str(ROOT / "launch/train_pure.py"),
        "model=tiny",
        "run.device=cpu",
        "parallel.backend=none",
        f"run.run_dir={tmp_path / 'run'}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{ROOT / 'data/pure_tokens/lsdir/record.json'}" in r.stderr and "data config not found" not in r.stderr
