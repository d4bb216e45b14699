"""Training sources, mixing, crops, bad-file handling and test folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import HRTrainDataset, ImageSource, PairedFolder, PairingError, collate_train, list_source
from common.data.io import write_image
from common.data.sources import write_manifest
from common.data.train_sets import crop_image, mixing_plan, resize_shorter


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(path, n, h=40, w=48, prefix="im"):
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_image(path / f"{prefix}{i}.png", _img(h, w, i))
    return path


def test_lsdir_tree_and_train_json(tmp_path):
    root = tmp_path / "LSDIR"
    for i in range(1, 6):  # folders of 1,000 named by their upper bound: 0001000, 0002000
        sub = root / "HR" / "train" / f"{((i - 1) // 3 + 1) * 1000:07d}"
        sub.mkdir(parents=True, exist_ok=True)
        write_image(sub / f"{i:07d}.png", _img(8, 8, i))
    tree = [p for p, _ in list_source(ImageSource(str(root), kind="lsdir"))]
    assert [p.split("/")[-1] for p in tree] == [f"{i:07d}.png" for i in range(1, 6)]
    recs = [{"path_gt": f"HR/train/0001000/{i:07d}.png", "path_lq": f"X4/{i:07d}.png"} for i in (2, 1)]
    (root / "train.json").write_text(json.dumps(recs))
    listed = list_source(ImageSource(str(root), kind="lsdir", label=0))
    assert listed == [(str(root / "HR/train/0001000/0000002.png"), 0), (str(root / "HR/train/0001000/0000001.png"), 0)]
    meta = tmp_path / "list.txt"
    meta.write_text("# comment\nHR/train/0002000/0000004.png (8,8,3) 1\n\n")
    assert list_source(ImageSource(str(root), kind="lsdir", meta=str(meta)))[0][0].endswith("0000004.png")


def test_ffhq_first_n_sorted(tmp_path):
    root = tmp_path / "ffhq"
    for folder, ids in (("01000", range(1000, 1003)), ("00000", range(0, 3))):
        for i in ids:
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / folder / f"{i:05d}.png")
    items = list_source(ImageSource(str(root), kind="ffhq", limit=4))
    assert [p.split("/")[-1] for p, _ in items] == ["00000.png", "00001.png", "00002.png", "01000.png"]
    assert len(list_source(ImageSource(str(root), kind="ffhq"))) == 6  # default limit 10k


def test_manifest_labels_and_errors(tmp_path):
    _folder(tmp_path / "imgs", 3)
    man = write_manifest([("imgs/im0.png", 0), ("imgs/im1.png", 1)], tmp_path / "m.csv")
    assert list_source(ImageSource(str(man), kind="manifest")) == [
        (str(tmp_path / "imgs/im0.png"), 0),
        (str(tmp_path / "imgs/im1.png"), 1),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.png,0\n")
    with pytest.raises(ValueError, match="'path' column"):
        list_source(ImageSource(str(bad), kind="manifest"))
    with pytest.raises(ValueError, match="kind"):
        ImageSource("x", kind="zip")


def test_mixing_ratios_per_epoch():
    plan = mixing_plan([100, 10], [0.5, 3.0], seed=1, epoch=0)
    src = plan[:, 0]
    assert (src == 0).sum() == 50 and (src == 1).sum() == 30
    assert len(np.unique(plan[src == 0, 1])) == 50  # subsample without replacement
    assert np.bincount(plan[src == 1, 1], minlength=10).tolist() == [3] * 10  # 3 whole copies
    again = mixing_plan([100, 10], [0.5, 3.0], seed=1, epoch=0)
    other = mixing_plan([100, 10], [0.5, 3.0], seed=1, epoch=1)
    assert (plan == again).all() and not (plan == other).all()
    assert set(plan[src == 0, 1]) != set(other[other[:, 0] == 0, 1])  # fresh subset per epoch


def test_dataset_mixes_sources_with_labels(tmp_path):
    pos = _folder(tmp_path / "pos", 8)
    neg = _folder(tmp_path / "neg", 4, prefix="n")
    ds = HRTrainDataset(
        [ImageSource(str(pos), ratio=0.5), ImageSource(str(neg), label=1, ratio=2.0)],
        crop_size=32,
        crop_mode="random",
        seed=3,
    )
    assert len(ds) == 12 and ds.source_counts() == {"folder:pos": 4, "folder:neg": 8}
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert labels.count(1) == 8 and labels.count(0) == 4
    assert all(("neg" in ds[i]["path"]) == (labels[i] == 1) for i in range(len(ds)))


def test_crops_and_sizes():
    rng = np.random.default_rng(0)
    img = _img(300, 500)
    assert resize_shorter(img, 640).shape == (640, 1067, 3)
    c = crop_image(img, 256, "resize_center", rng, resize_to=320)  # VARSR: shorter side -> 1.25x crop
    full = resize_shorter(img, 320)
    top, left = (full.shape[0] - 256) // 2, (full.shape[1] - 256) // 2
    np.testing.assert_array_equal(c, full[top : top + 256, left : left + 256])
    r = crop_image(img, 128, "random", rng)
    assert r.shape == (128, 128, 3)
    found = [
        (t, l)
        for t in range(300 - 127)
        for l in range(500 - 127)
        if (img[t, l] == r[0, 0]).all() and (img[t : t + 128, l : l + 128] == r).all()
    ]
    assert found  # a native-resolution window of the original
    assert crop_image(img, 64, "resize_random", rng, resize_to=80).shape == (64, 64, 3)


def test_items_reproducible_and_flipped(tmp_path):
    _folder(tmp_path / "a", 4, 64, 64)
    calls = []

    def sampler(rng):
        calls.append(1)
        return {"k": torch.from_numpy(rng.random(3).astype(np.float32))}

    kw = dict(crop_size=32, crop_mode="random", seed=7, kernel_sampler=sampler)
    ds1, ds2 = (
        HRTrainDataset([ImageSource(str(tmp_path / "a"))], **kw),
        HRTrainDataset([ImageSource(str(tmp_path / "a"))], **kw),
    )
    a, b = ds1[2], ds2[2]
    torch.testing.assert_close(a["hr"], b["hr"])
    torch.testing.assert_close(a["kernels"]["k"], b["kernels"]["k"])  # same (seed, epoch, index)
    ds2.set_epoch(1)
    assert not torch.equal(ds2[2]["kernels"]["k"], a["kernels"]["k"])
    assert a["hr"].shape == (3, 32, 32) and a["hr"].dtype == torch.float32 and 0 <= a["hr"].min() <= a["hr"].max() <= 1


def test_hflip_mirrors_the_same_crop(tmp_path):
    _folder(tmp_path / "f", 8, 48, 48)
    kw = dict(crop_size=32, crop_mode="random", seed=5)
    flip = HRTrainDataset([ImageSource(str(tmp_path / "f"))], hflip=True, **kw)
    plain = HRTrainDataset([ImageSource(str(tmp_path / "f"))], hflip=False, **kw)
    n_flipped = 0
    for i in range(len(flip)):
        a, b = flip[i]["hr"], plain[i]["hr"]  # crop drawn first from the same per-item generator
        if torch.equal(a, b.flip(-1)) and not torch.equal(a, b):
            n_flipped += 1
        else:
            assert torch.equal(a, b)
    assert 0 < n_flipped < len(flip)


def test_bad_files_skipped_and_counted(tmp_path):
    root = _folder(tmp_path / "mix", 2, 64, 64)
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    good = (root / "im0.png").read_bytes()
    (root / "trunc.png").write_bytes(good[: len(good) // 3])
    write_image(root / "small.png", _img(10, 10))
    Image.fromarray(_img(64, 64)[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([_img(64, 64), np.full((64, 64), 200, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(_img(64, 64)).convert("CMYK").save(root / "cmyk.jpg")
    import cv2

    cv2.imwrite(str(root / "deep16.png"), (_img(64, 64).astype(np.uint16) * 257))
    ds = HRTrainDataset([ImageSource(str(root))], crop_size=32, crop_mode="random", min_size=32, seed=0)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(ds) == 10
    bad_names = {"zero.png", "text.jpg", "trunc.png", "small.png"}
    assert not any(it["path"].split("/")[-1] in bad_names for it in items)
    assert {"gray.png", "rgba.png", "cmyk.jpg", "deep16.png"} <= {it["path"].split("/")[-1] for it in items}
    assert sum(ds.bad_counts.values()) == 4 and ds.bad_counts["too small"] == 1
    batch = collate_train(items[:3])
    assert batch["hr"].shape == (3, 3, 32, 32) and batch["label"].dtype == torch.long


def test_dataloader_workers_survive_bad_files(tmp_path):
    root = _folder(tmp_path / "w", 3, 48, 48)
    (root / "zero.png").write_bytes(b"")
    ds = HRTrainDataset([ImageSource(str(root))], crop_size=32, seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_train)
    n = sum(b["hr"].shape[0] for b in dl)
    assert n == 4


def test_paired_folder_errors_name_files(tmp_path):
    lr, hr = tmp_path / "LR", tmp_path / "HR"
    for d, s in ((lr, 8), (hr, 32)):
        d.mkdir()
        for n in ("a", "b"):
            write_image(d / f"{n}.png", _img(s, s))
    ds = PairedFolder(lr, hr, scale=4)
    assert ds.names == ["a", "b"] and ds[0]["hr"].shape == (3, 32, 32) and ds[0]["lr"].shape == (3, 8, 8)
    assert "hr" not in PairedFolder(lr)[0]
    write_image(lr / "c.png", _img(8, 8))
    with pytest.raises(PairingError, match=r"c"):
        PairedFolder(lr, hr)
    (lr / "c.png").unlink()
    write_image(hr / "b.png", _img(30, 30))
    with pytest.raises(PairingError, match=r"b: HR 30x30"):
        PairedFolder(lr, hr, scale=4)[1]


def test_bundled_dataset(tmp_path):
    from common.data.bundled import BUNDLED, bundled_pairs, write_bundled_dataset
    from common.data.io import read_image

    out = write_bundled_dataset(tmp_path, size=96)
    names = sorted(p.stem for p in (out / "HR").iterdir())
    assert names == sorted(BUNDLED) and "moon" not in names and len(names) == 6
    assert all(read_image(p).shape == (96, 96, 3) for p in (out / "HR").iterdir())
    name, lr, hr = bundled_pairs(size=64)[0]
    assert lr.shape == (16, 16, 3) and hr.shape == (64, 64, 3)
    assert len(list_source(ImageSource("", kind="bundled"))) == 6


def test_collate_with_real_kernel_sampler(tmp_path):
    from common.degradation import KernelSampler, get_preset

    _folder(tmp_path / "k", 2, 48, 48)
    ds = HRTrainDataset(
        [ImageSource(str(tmp_path / "k"))], crop_size=32, seed=0, kernel_sampler=KernelSampler(get_preset("varsr_mild"))
    )
    batch = collate_train([ds[0], ds[1]])
    assert batch["kernels"]["kernel1"].shape == (2, 21, 21)
    again = HRTrainDataset(
        [ImageSource(str(tmp_path / "k"))], crop_size=32, seed=0, kernel_sampler=KernelSampler(get_preset("varsr_mild"))
    )[1]
    torch.testing.assert_close(again["kernels"]["kernel1"], batch["kernels"]["kernel1"][1])
