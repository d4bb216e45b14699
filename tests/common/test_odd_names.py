"""One odd but legal file name never stops a whole folder (issue 16, poor class).

Linux allows 255-byte names and names that are not UTF-8; two photos may share a stem. Each used to
end the run (a traceback from the atomic writer's temp name, an encoding error when the per-image
CSV was written after every image had been scored, a refusal of the whole LR folder).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from common.paths import EXIT_SKIPPED, exit_code
from tests.folder_cases import load_launcher

LONG = "L" * 247 + ".png"  # 251 bytes: legal (NAME_MAX 255), but the temp name of it was not
LATIN1 = b"caf\xe9.png"  # a name written by a Latin-1 system: not UTF-8


def _photos(d, names, side=64, seed=0):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        path = os.path.join(os.fsencode(d), name) if isinstance(name, bytes) else os.path.join(d, name)
        Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(path, format="PNG")
    return d


def test_degrade_and_evaluate_take_long_and_non_utf8_names(tmp_path):
    hr = _photos(tmp_path / "hr", ["good.png", LONG, LATIN1])
    out = tmp_path / "pairs"
    res = load_launcher("degrade").main([f"hr_dir={hr}", f"out_dir={out}", "device=cpu", "progress=false"])
    assert res["written"] == 3 and res["skipped"] == 0
    names = set(os.listdir(os.fsencode(out / "LR")))
    assert names == {b"good.png", LONG.encode(), LATIN1}
    # scoring the pairs: every name reaches the per-image CSV byte for byte
    m = tmp_path / "m.json"
    args = [f"sr_dir={out / 'HR'}", f"hr_dir={out / 'HR'}", f"out={m}", "metrics=[ssim]", "progress=false"]
    summary = load_launcher("evaluate").main(args)
    assert summary["n_images"] == 3 and summary["skipped"] == 0
    rows = (tmp_path / "m_per_image.csv").read_bytes().splitlines()[1:]
    assert sorted(r.split(b",")[0] for r in rows) == sorted([b"good", b"caf\xe9", LONG[:-4].encode()])


def test_two_inputs_with_one_stem_skip_one_instead_of_the_folder(tmp_path, monkeypatch, caplog, capsys):
    import varsr.evaluate as ve

    monkeypatch.setattr(ve, "load_models", lambda cfg, device: (None, None))
    monkeypatch.setattr(ve, "sr_one", lambda m, v, img, cfg, *a, **k: torch.full((1, 3, 8, 8), img[0, 0, 0] / 255))
    lr = _photos(tmp_path / "lr", ["a.png", "b.png"], side=4)
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(lr / "a.jpg", quality=100)  # same stem as a.png
    out = tmp_path / "out"
    res = load_launcher("sample_varsr").main(
        [f"lr_dir={lr}", f"out_dir={out}", "model=tiny", "ckpt=null", "vae_ckpt=null", "metrics=[]"]
    )
    assert exit_code(res) == EXIT_SKIPPED and res["images"] == 2 and res["skipped_files"] == [str(lr / "a.png")]
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "run_settings.json"]
    assert int(np.asarray(Image.open(out / "a.png"))[0, 0, 0]) == 7  # a.jpg made it (first in name order)
    log = caplog.text + capsys.readouterr().out
    assert f"skipped {lr / 'a.png'}: same name as a.jpg" in log
