"""Dry runs (common/dry_run.py, common/dry_run_report.py, pure/dry_run.py) against independent references.

The shipped PURE experiment (`+exp=lsdir_ffhq`: FSDP2, bf16 params / fp32 reduction, full activation
checkpointing, autocast) is composed with size overrides only; every expected figure is a closed
form written here from those sizes (parameter counts, FSDP2 group contents, 6N + attention).
"""

from __future__ import annotations

import dataclasses

import pytest

from common.config import compose_config, to_dataclass
from common.devices import DEVICES, get_device

C, I, L, V, HEADS, MP = 64, 128, 2, 1024, 8, 8  # hidden, MLP, layers, vocabulary, heads, QK-norm groups
B, T = 2, 256  # micro-batch x sequence
SIZES = [
    "+exp=lsdir_ffhq",
    f"model.hidden_size={C}",
    f"model.intermediate_size={I}",
    f"model.num_hidden_layers={L}",
    f"model.num_attention_heads={HEADS}",
    f"model.num_key_value_heads={HEADS}",
    f"model.model_parallel_size={MP}",  # every parameter's first dim divisible by 8: no FSDP2 padding
    f"model.vocab_size={V}",
    f"data.batch_size={B}",
    f"data.max_seq_len={T}",
]
HD = C // HEADS
PER_LAYER = 4 * C * C + 3 * C * I + 4 * MP * HD + 2 * C  # q k v o, gate up down, q/k norm w+b, 2 RMSNorms
MATMUL_PER_LAYER = 4 * C * C + 3 * C * I
N = L * PER_LAYER + 2 * V * C + C  # + embedding, lm_head, final norm
TENSORS = 13 * L + 3


def _train_cfg(*extra):
    from pure.config import PureTrainConfig

    return to_dataclass(PureTrainConfig, compose_config("pure", "train", [*SIZES, *extra]))


@pytest.fixture(scope="module")
def one_rank():
    """The dry run of the shipped config at world 1 (shared by the tests below)."""
    from pure.dry_run import simulate_train

    return simulate_train(_train_cfg(), DEVICES["h100"], 1)[0]


def test_memory_matches_a_real_cpu_run(one_rank):
    """Same model, config and step on real CPU tensors under the same tracker: peaks within 10%."""
    from pure.dry_run import simulate_train

    cfg = _train_cfg()
    fake = one_rank.m
    real = simulate_train(cfg, DEVICES["h100"], 1, fake=False)[0].m
    assert fake.peak == pytest.approx(real.peak, rel=0.10)
    for cat in ("parameters", "optimizer state"):
        assert fake.device_bytes[cat] == real.device_bytes[cat]
    assert real.device_bytes["parameters"] == 4 * N  # one fp32 process: the closed form
    assert real.device_bytes["optimizer state"] == 2 * 4 * N + 4 * TENSORS  # AdamW moments + a step count each


def test_flops_are_6n_plus_attention(one_rank):
    """Model FLOPs = 6N + 12 L C T per token (PaLM, appendix B). Executed FLOPs add what the kernels
    recompute: the forward of every checkpointed layer, and flash attention's backward recomputing
    the scores (5 attention matmuls in backward instead of 4: 2 L C T per token)."""
    r = one_rank
    tokens = B * T
    n = L * MATMUL_PER_LAYER + V * C  # matmul weights; the embedding lookup is no matmul
    model = (6 * n + 12 * L * C * T) * tokens
    recompute = (2 * L * MATMUL_PER_LAYER + 4 * L * C * T + 2 * L * C * T) * tokens
    assert r.m.traffic.flops == pytest.approx(model + recompute, rel=0.02)
    assert r.model_flops == pytest.approx(model, rel=0.02)


def test_fsdp2_eight_ranks_shards_and_collectives():
    """Per-rank shards are 1/8 of the closed form; one step's all-gathers / reduce-scatters are those of
    the wrapping: one group per decoder layer, embedding, lm_head (kept unsharded) and root (final norm)."""
    from pure.dry_run import simulate_train

    r = simulate_train(_train_cfg("nproc=8"), DEVICES["h100"], 8)[0]
    raw = r.m.raw
    assert raw["Sharded Param"] == 4 * N // 8
    assert raw["OptState"] == 2 * 4 * N // 8 + 4 * TENSORS
    col = r.m.traffic.collectives
    # forward gathers every group (bf16); backward re-gathers the groups resharded after forward
    # (embedding, layers); every group reduce-scatters its fp32 gradients once
    assert col["allgather_base"][0] == (L + 3) + (L + 1)
    assert col["allgather_base"][1] == 2 * N + 2 * (V * C + L * PER_LAYER)
    assert col["reduce_scatter_base"] == [L + 3, 4 * N]


def _pure_train_cli(capsys, *args):
    import launch.train_pure as launcher

    try:
        out = launcher.run([*SIZES, *args])
        code = 0
    except SystemExit as e:
        out, code = None, e.code
    cap = capsys.readouterr()
    return code, out, cap.out, cap.err


def test_train_launcher_dry_run(capsys):
    """`dry_run=` prints the tables and exits 0 when it fits, 2 with one line naming the keys when not."""
    code, out, stdout, _ = _pure_train_cli(capsys, "nproc=8", "dry_run=h100")
    assert code == 0 and out["dry_run"][0]["fits"]
    assert "| optimizer state |" in stdout and "allgather_base" in stdout
    code, _, _, err = _pure_train_cli(capsys, "nproc=1", "dry_run=0.01")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "does not fit" in lines[0] and "parallel.cpu_offload" in lines[0] and "data.batch_size" in lines[0]


def test_preflight_refuses_before_loading(capsys, monkeypatch, tmp_path):
    """A launch on a GPU too small is refused by the cached preflight before any data or weight is read;
    `preflight=false` goes on (and then meets the missing input folder)."""
    import common.dry_run_report as rep
    import launch.sample_pure as launcher

    monkeypatch.setenv("ARSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rep, "visible_device", lambda cfg: get_device("0.001"))
    argv = ["+exp=quick", f"lr_dir={tmp_path / 'missing'}", f"out_dir={tmp_path / 'out'}"]
    for _ in range(2):  # the second launch reads the cached verdict
        with pytest.raises(SystemExit) as e:
            launcher.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "preflight: does not fit" in err[0] and "batch_size" in err[0]
    assert len(list((tmp_path / "preflight").glob("*.json"))) == 1
    with pytest.raises(SystemExit) as e:
        launcher.main([*argv, "preflight=false"])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_default_pure_sampling_fits_24gb():
    """Issue 18 row 10: the default sample.yaml (7B, text + image answer at 512) sized its KV cache for
    8,192 new tokens in both CFG groups (20,992 slots, 11 GB: 25.2 GB with the weights). The cache now
    holds what the request needs and the whole call fits a 24 GB card."""
    from common.dry_run_report import cheap_reports
    from pure.dry_run import SAMPLE
    from pure.evaluate import PureSampleConfig
    from pure.generate import tokens_needed
    from pure.tokenizer import SpecialIds

    cfg = to_dataclass(PureSampleConfig, compose_config("pure", "sample", ["lr_dir=x"]))
    lat = 64  # a 512 px LQ in the VQ-8 latent
    prompt = [0] * 40 + [SpecialIds.IMG_START, 8804 + 16, 8804 + 16] + ([10] * lat + [8803]) * lat + [8196, 8710]
    assert tokens_needed([prompt], SpecialIds.EOT, cfg.max_new_tokens, cfg.max_text_tokens) == 512 + 3 + 4161 + 1
    r = cheap_reports(cfg, SAMPLE, DEVICES["rtx4090"], 1)[0]
    kv_slots = r.m.device_bytes["KV cache"] / (32 * 2 * 4096 * 2)  # bf16 K and V of 32 layers per slot
    assert kv_slots < 14_500  # was 20,992
    assert r.m.device_bytes["parameters"] >= 14.2e9  # the 7B in bf16 (+ the VQ)
    assert r.fits, r.line()
    assert not dataclasses.replace(r, device=get_device("16")).fits  # `sample_pure.py dry_run=16`: 14.2 GB weights
