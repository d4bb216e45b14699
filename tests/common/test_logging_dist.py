"""Rank helpers in a single process, tables, grids and the offline tracker."""

import csv
import json

import torch
from PIL import Image

from common.dist import all_reduce_mean, get_rank, get_world_size, init_distributed, seed_everything
from common.logging import Tracker, markdown_table, save_image_grid, write_table


def test_single_process_dist_is_noop():
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert get_rank() == 0 and get_world_size() == 1
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(t), t)


def test_seed_everything_is_rank_dependent_and_reproducible():
    seed_everything(1, rank=0)
    a = torch.rand(3)
    seed_everything(1, rank=0)
    b = torch.rand(3)
    seed_everything(1, rank=1)
    c = torch.rand(3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_write_table_formats(tmp_path):
    rows = [{"set": "RealSR", "psnr": 25.15111, "ssim": 0.7341}, {"set": "DRealSR", "psnr": 27.9, "lpips": 0.3}]
    paths = write_table(rows, tmp_path / "t")
    assert json.loads(paths["json"].read_text())[1]["lpips"] == 0.3
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert got[0]["set"] == "RealSR" and got[1]["ssim"] == ""
    md = paths["md"].read_text().splitlines()
    assert md[0] == "| set | psnr | ssim | lpips |" and "25.1511" in md[2]
    assert markdown_table([]) == ""


def test_image_grid_layout(tmp_path):
    lr = torch.rand(3, 16, 16)
    sr = torch.rand(3, 64, 64)
    p = save_image_grid([[lr, sr, sr], [lr, sr, sr]], tmp_path / "g.png", labels=["LR", "SR", "HR"])
    w, h = Image.open(p).size
    assert w == 3 * 64 + 4 * 4 and h == 2 * 64 + 3 * 4 + 16


def test_tracker_offline_writes_jsonl(tmp_path):
    tr = Tracker("arsr-test", tmp_path, {"a": 1}, mode="disabled")
    tr.log({"loss": torch.tensor(1.5), "lr": 1e-4}, step=3)
    tr.finish()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row == {"step": 3, "loss": 1.5, "lr": 1e-4}


def test_plot_curves_from_metrics_jsonl(tmp_path):
    from common.logging import plot_curves

    tr = Tracker("arsr-test", tmp_path / "run", {}, mode="disabled")
    for step in range(1, 6):
        tr.log({"loss": 1.0 / step}, step=step)
    tr.finish()
    p = plot_curves({"run": (tmp_path / "run" / "metrics.jsonl", ["loss", "absent"])}, tmp_path / "c.png")
    w, h = Image.open(p).size
    assert (w, h) == (500, 320)
