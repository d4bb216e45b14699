"""A failed torch.compile costs speed, never the run (issue 18 row 9): PURE's decode step and
VARSR's per-scale blocks, compiled by default on CUDA, fall back to eager with one warning when
the compiler raises (no C compiler, old torch/Triton); the program's own errors still raise."""

import logging

import pytest
import torch

import common.compile
from common.compile import CompiledOrEager, raise_recompile_limit


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no working C++ compiler found")  # what inductor says without cc


@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    monkeypatch.setattr(common.compile, "_WARNED", set())
    monkeypatch.setattr(common.compile, "get_logger", lambda: logging.LoggerAdapter(_Rec(seen), {}))
    return seen


class _Rec(logging.Logger):
    def __init__(self, seen):
        super().__init__("rec")
        self.seen = seen

    def _log(self, level, msg, args, **kw):
        self.seen.append(msg)


def test_compiler_failure_runs_eagerly_with_one_warning(warnings_seen):
    calls = []

    def f(x):
        calls.append(1)
        return x * 2 + 1

    g = CompiledOrEager(f, "toy step", backend=_broken_backend)
    x = torch.arange(4.0)
    assert torch.equal(g(x), f(x)) and torch.equal(g(x + 1), f(x + 1))
    h = CompiledOrEager(f, "toy step", backend=_broken_backend)  # a second engine of the same step
    assert torch.equal(h(x), f(x))
    assert len(warnings_seen) == 1 and "toy step" in warnings_seen[0] and "eagerly" in warnings_seen[0]


def test_program_errors_are_not_swallowed(warnings_seen):
    def f(x):
        return x @ torch.ones(3, 3)  # shape error: raised eagerly too

    with pytest.raises(Exception, match="size|shape|mat"):
        CompiledOrEager(f, "bad shapes", backend="eager")(torch.ones(2, 2))


def test_recompile_limit_raised_not_lowered():
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    old = getattr(cfg, name)
    try:
        setattr(cfg, name, 8)
        raise_recompile_limit(64)
        assert getattr(cfg, name) == 64
        raise_recompile_limit(16)
        assert getattr(cfg, name) == 64
    finally:
        setattr(cfg, name, old)


def test_pure_decoding_falls_back_to_eager(monkeypatch, warnings_seen, one_thread):
    import pure.engine
    from pure.engine import release_engines
    from pure.generate import generate
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.processors import SamplingConfig
    from pure.tokenizer import ImageCodeMap
    from pure.tokenizer import SpecialIds as S

    torch.manual_seed(0)
    model = ChameleonForCausalLM(chameleon_config("tiny")).eval()
    image_mask = ImageCodeMap.synthetic().image_mask()
    prompts = [[0, 9100, 9200, S.EOT, S.IMG_START, S.SIZE_BASE + 1, S.SIZE_BASE + 1]]
    outs = {}
    for flag in (False, True):
        release_engines()
        if flag:
            monkeypatch.setattr(pure.engine, "COMPILE_BACKEND", _broken_backend)
        outs[flag] = generate(
            model, prompts, SamplingConfig(temperature=0.9, cfg=0.8), image_mask, 12, seed=3, compile=flag
        )
    release_engines()
    assert outs[True].tokens == outs[False].tokens
    assert len(warnings_seen) == 1 and "PURE" in warnings_seen[0]


def test_varsr_sampling_falls_back_to_eager(monkeypatch, warnings_seen):
    import varsr.compiled
    from tests.varsr.conftest import lively
    from varsr.generate import generate_fhat
    from varsr.model.config import model_config

    model, vqvae = lively(model_config("tiny", patch_nums=(1, 2, 3)))
    lr = torch.rand(1, 3, 48, 48) * 2 - 1
    eager = generate_fhat(model, vqvae, lr, cfg=3.0, generator=[torch.Generator().manual_seed(1)])
    monkeypatch.setattr(varsr.compiled, "COMPILE_BACKEND", _broken_backend)
    monkeypatch.setattr(varsr.compiled, "_compiled", {})
    comp = generate_fhat(model, vqvae, lr, cfg=3.0, generator=[torch.Generator().manual_seed(1)], compile=True)
    assert torch.equal(eager, comp)
    assert len(warnings_seen) >= 1 and all("VARSR" in w for w in warnings_seen)
