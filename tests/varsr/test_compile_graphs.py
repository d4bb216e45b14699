"""torch.compile builds one graph per block SHAPE, not one per block (issue 18 row 3).

Each block used to hold its drop-path rate as a Python float, which dynamo guards on: every block
of a model with the shipped ``drop_path_rate`` (0.1, linearly spaced over depth) compiled its own
graph, and d24 ran past the recompile limit into eager. A counting backend (it compiles nothing,
runs the captured graph as is) records how many graphs dynamo hands over; the counts must not
depend on the depth. Closed forms: training, one graph (every block sees the same shapes);
sampling, one graph per scale plus one for the refiner trunk.
"""

import pytest
import torch

from common.parallel import compile_blocks
from varsr.config import load_train_config
from varsr.losses import varsr_loss
from varsr.model import build_models, model_config


class CountingBackend:
    """A torch.compile backend that counts the graphs it receives and runs them uncompiled."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(scope="module")
def shipped_rate() -> float:
    rate = load_train_config([]).model.drop_path_rate  # the shipped d24 default
    assert rate > 0
    return rate


def tiny(depth: int, rate: float):
    torch.manual_seed(0)
    return build_models(model_config("tiny", depth=depth, drop_path_rate=rate))


def training_graphs(depth: int, rate: float) -> int:
    """Graphs of a training forward + backward through common.parallel.compile_blocks (parallelize's path)."""
    torch._dynamo.reset()
    model, vqvae = tiny(depth, rate)
    model.train()
    backend = CountingBackend()
    assert compile_blocks(model.blocks, backend=backend) == depth
    hr = torch.rand(2, 3, 96, 96) * 2 - 1
    loss, _ = varsr_loss(model, vqvae, hr, hr, torch.zeros(2, dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None for p in model.blocks.parameters())
    return backend.graphs


def sampling_graphs(depth: int, rate: float, monkeypatch) -> int:
    """Graphs of one compiled sampling call (varsr.compiled: per-scale block graph + refiner trunk)."""
    import varsr.compiled as compiled
    from varsr.sample import sample_sr

    torch._dynamo.reset()
    monkeypatch.setattr(compiled, "_compiled", {})
    backend = CountingBackend()
    monkeypatch.setattr(compiled, "COMPILE_BACKEND", backend)
    model, vqvae = tiny(depth, rate)
    sample_sr(model.eval(), vqvae, torch.rand(1, 3, 24, 24), compile=True)
    return backend.graphs


@pytest.mark.slow
def test_training_blocks_share_one_graph(shipped_rate, one_thread):
    assert [training_graphs(d, shipped_rate) for d in (2, 3)] == [1, 1]


@pytest.mark.slow
def test_sampling_graphs_per_scale_not_per_block(shipped_rate, one_thread, monkeypatch):
    scales = len(model_config("tiny").patch_nums)
    got = [sampling_graphs(d, shipped_rate, monkeypatch) for d in (2, 3)]
    assert got == [scales + 1, scales + 1]


def test_drop_path_rate_is_not_state():
    """The rate buffer stays out of the state dict (official names) and survives a meta build."""
    model, _ = build_models(model_config("tiny", depth=3, drop_path_rate=0.1), device="meta")
    model.to_empty(device="cpu")
    model.reset_buffers()
    assert [round(float(b.drop_path.rate), 6) for b in model.blocks] == [0.0, 0.05, 0.1]
    assert not any("drop_path" in k for k in model.state_dict())
