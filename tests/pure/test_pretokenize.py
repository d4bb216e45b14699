"""Pre-tokenisation: shard/index format, sequence layout of real records, resumability after a crash,
and the official-pickle converter."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import pure.pretokenize as pt
from pure.config import PretokenizeConfig
from pure.data import TokenShardDataset
from pure.sequence import INSTRUCTION

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    (d / "broken.png").write_bytes(b"not a png")  # skipped and counted by the dataset
    return d


def _cfg(out, images, tok_path):
    return PretokenizeConfig(
        out_dir=str(out),
        images=[str(images)],
        target_size=64,
        shard_size=2,
        tokenizer=str(tok_path),
        device="cpu",
        batch_size=2,
        seed=3,
    )


def test_format_and_layout(tmp_path, images, test_tokenizer_path, test_tokenizer):
    cfg = _cfg(tmp_path / "a", images, test_tokenizer_path)
    counts = pt.pretokenize(cfg, batch_size=2, limit=3)
    rec = pt.finalize(cfg.out_dir)
    assert counts == {"written": 3, "rejected": 0, "shards": 2}
    index = [json.loads(l) for l in (tmp_path / "a/shard_r000_00000.jsonl").read_text().splitlines()]
    assert [set(e) for e in index] == [{"file", "idx", "len", "id", "type"}] * 2
    with safe_open(str(tmp_path / "a/shard_r000_00000.safetensors"), "pt") as f:
        assert set(f.keys()) == {"tokens", "mask", "offsets"}
        assert f.get_tensor("offsets").tolist() == [0, index[0]["len"], index[0]["len"] + index[1]["len"]]
    ds = TokenShardDataset(rec)
    assert len(ds) == 3
    tokens, labels = ds[0]
    n_instr = len(test_tokenizer.encode(INSTRUCTION))
    lq = tokens[1 + n_instr : 1 + n_instr + 76]  # 64 px -> 8x8 codes -> 76-token block
    assert tokens[0] == 0 and lq[:3] == [8197, 8806, 8806] and lq[-1] == 8196
    p_len = 1 + n_instr + 76 + 1
    assert tokens[p_len - 1] == 8710 and set(labels[:p_len]) == {-100} and labels[p_len:] == tokens[p_len:]
    assert labels[-2:] == [8196, 8710] and len(tokens) == p_len + (len(tokens) - p_len)
    answer = test_tokenizer.decode(tokens[p_len : len(tokens) - 76 - 1])
    assert answer.split(",")[0] in ("Small blur", "Medium blur", "Large blur") and answer.endswith("noise. ")


@pytest.mark.slow  # ~20 s on 2 loaded cores: three pipeline runs with a 70 M-parameter VQ
def test_resume_after_crash_is_identical(tmp_path, images, test_tokenizer_path, monkeypatch):
    ref = _cfg(tmp_path / "ref", images, test_tokenizer_path)
    pt.pretokenize(ref, batch_size=2)
    pt.finalize(ref.out_dir)

    cfg = _cfg(tmp_path / "b", images, test_tokenizer_path)
    real, calls = pt.write_shard, []

    def crash_on_second(path, records):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(path, records)

    monkeypatch.setattr(pt, "write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        pt.pretokenize(cfg, batch_size=2)
    assert json.loads((tmp_path / "b/progress_r000.json").read_text())["done"] == ["shard_r000_00000"]
    monkeypatch.setattr(pt, "write_shard", real)
    pt.pretokenize(cfg, batch_size=2)
    pt.finalize(cfg.out_dir)
    names = sorted(p.name for p in (tmp_path / "ref").glob("shard_*"))
    assert names == sorted(p.name for p in (tmp_path / "b").glob("shard_*")) and len(names) == 6
    for n in names:
        assert (tmp_path / "ref" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert json.loads((tmp_path / "ref/record.json").read_text()) == json.loads(
        (tmp_path / "b/record.json").read_text()
    )


def test_official_pickle_converter(tmp_path):
    recs = []
    for i in range(3):
        tok = list(range(10 + i))
        item = {"token": tok, "label": [-100] * 4 + tok[4:], "id": f"x{i}"}
        with open(tmp_path / f"{i}.pkl", "wb") as f:
            pickle.dump(item, f)
        recs.append({"file": f"{i}.pkl", "len": len(tok), "id": f"x{i}"})
    (tmp_path / "official.json").write_text(json.dumps(recs))
    with pytest.raises(PermissionError, match="trusted"):
        pt.convert_official(tmp_path / "official.json", tmp_path / "out")
    rec = pt.convert_official(tmp_path / "official.json", tmp_path / "out", trusted=True, shard_size=2)
    ds = TokenShardDataset(rec)
    assert [ds[i] for i in range(3)] == [(list(range(10 + i)), [-100] * 4 + list(range(4, 10 + i))) for i in range(3)]
    assert len(list((tmp_path / "out").glob("official_*.safetensors"))) == 2
