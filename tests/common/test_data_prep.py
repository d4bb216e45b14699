"""data/ preparation scripts on fake local copies: name matching, negatives rule, FFHQ resize."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
from PIL import Image

from common.data.io import read_image, write_image
from common.data.prep import match_pairs, pair_key, select_negatives


def _script(repo_root, name):
    spec = importlib.util.spec_from_file_location(f"prep_{name}", repo_root / "data" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pair_keys_for_realsr_and_drealsr():
    assert pair_key("Canon_001_LR4") == pair_key("Canon_001_HR") == "Canon_001"
    assert pair_key("Canon_10_x1") == pair_key("Canon_10_x4") == "Canon_10"
    assert pair_key("0801_gt") == pair_key("0801_lq") == "0801"
    assert pair_key("plain_name") == "plain_name"
    with pytest.raises(ValueError, match="Nikon_002"):
        match_pairs(["Nikon_001_HR.png", "Nikon_002_HR.png"], ["Nikon_001_LR4.png"])


def test_stablesr_script_writes_identical_names(tmp_path, repo_root):
    hr, lr = tmp_path / "src" / "HR", tmp_path / "src" / "LR"
    for i in (1, 2):
        write_image(hr / f"Canon_{i:03d}_HR.png", _img(32, 40, i))
        write_image(lr / f"Canon_{i:03d}_LR4.png", _img(8, 10, i))
    mod = _script(repo_root, "stablesr_testsets")
    assert mod.main(["--set", "RealSR", "--hr", str(hr), "--lr", str(lr), "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out/RealSR/HR").iterdir())
    assert names == ["Canon_001.png", "Canon_002.png"] == sorted(p.name for p in (tmp_path / "out/RealSR/LR").iterdir())
    np.testing.assert_array_equal(read_image(tmp_path / "out/RealSR/HR/Canon_002.png"), _img(32, 40, 2))
    write_image(lr / "Canon_002_LR4.png", _img(9, 10))  # wrong scale -> error naming the pair
    assert mod.main(["--set", "RealSR", "--hr", str(hr), "--lr", str(lr), "--out", str(tmp_path / "o2")]) == 1


def test_negative_rule_is_min_plus_s_max():
    scores = [("a", 10.0), ("b", 20.0), ("c", 50.0), ("d", 90.0)]
    # tau = 10 + 0.4 * 90 = 46 (a min-max interpolation would give 10 + 0.4 * 80 = 42)
    assert select_negatives(scores, 0.4) == ["a", "b"]
    assert select_negatives([("x", 1.0), ("y", 45.0), ("z", 100.0)], 0.44) == ["x"]  # tau 45: strict <


def test_iqa_negatives_script(tmp_path, repo_root):
    imgs = tmp_path / "koniq"
    rows = [("i0.jpg", 1.0), ("i1.jpg", 2.0), ("i2.jpg", 3.0), ("i3.jpg", 4.0), ("i4.jpg", 5.0)]
    for name, _ in rows:
        write_image(imgs / name, _img(8, 8))
    with open(tmp_path / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "other", "MOS"])
        w.writerows((n, "x", s) for n, s in rows)
    out = tmp_path / "neg.csv"
    mod = _script(repo_root, "iqa_negatives")
    assert (
        mod.main(
            [
                "--scores",
                str(tmp_path / "scores.csv"),
                "--images",
                str(imgs),
                "--dataset",
                "koniq10k",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    got = list(csv.DictReader(open(out)))  # tau = 1 + 0.6 * 5 = 4 -> scores 1, 2, 3
    assert [r["path"].split("/")[-1] for r in got] == ["i0.jpg", "i1.jpg", "i2.jpg"]
    assert {r["label"] for r in got} == {"1"}


def test_ffhq_script_resizes_first_n(tmp_path, repo_root):
    src = tmp_path / "images1024x1024"
    for folder, ids in (("00000", (0, 1, 2)), ("01000", (1000,))):
        for i in ids:
            (src / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_img(64, 64, i)).save(src / folder / f"{i:05d}.png")
    (src / "00000" / "00003.png").write_bytes(b"")  # a broken file is skipped, not fatal
    mod = _script(repo_root, "ffhq")
    assert mod.main(["--root", str(src), "--out", str(tmp_path / "o"), "--n", "4", "--size", "16"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "o/manifest.csv")))
    assert [r["path"] for r in rows] == ["00000/00000.png", "00000/00001.png", "00000/00002.png"]
    assert read_image(tmp_path / "o/00000/00001.png").shape == (16, 16, 3)


def test_lsdir_and_lr_only_scripts(tmp_path, repo_root):
    lsdir = tmp_path / "LSDIR" / "HR" / "train" / "0001000"
    for i in (1, 2):
        write_image(lsdir / f"{i:07d}.png", _img(8, 8, i))
    assert _script(repo_root, "lsdir").main(["--root", str(tmp_path / "LSDIR")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "LSDIR/manifest.csv")))
    assert [r["path"] for r in rows] == ["HR/train/0001000/0000001.png", "HR/train/0001000/0000002.png"]
    src = tmp_path / "lq"
    write_image(src / "a.jpg", _img(8, 8))
    write_image(src / "b.png", _img(8, 8))
    import sys

    sys.path.insert(0, str(repo_root / "data"))
    try:
        mod = _script(repo_root, "lr_only")
    finally:
        sys.path.remove(str(repo_root / "data"))
    assert mod.run("RealLQ250", 250, ["--src", str(src), "--out", str(tmp_path / "t")]) == 0
    assert sorted(p.name for p in (tmp_path / "t/RealLQ250/LR").iterdir()) == ["a.png", "b.png"]
