"""common.parallel on both apps' real blocks: activation checkpointing (full / selective), per-block
torch.compile, the dtype map, the fused-AdamW choice and the DataLoader feeding options.

References are independent code paths: the same model run eagerly without checkpointing or
compile, under the same seed (dropout / drop-path masks included).
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common import parallel as par
from pure.losses import PureLoss
from pure.model import ChameleonForCausalLM, chameleon_config
from varsr.losses import varsr_loss
from varsr.model import build_models, model_config

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ tiny models of both apps
def pure_case(dropout: float):
    """(root module, blocks, loss fn) for a tiny PURE model on a fixed batch with a -100 prompt half."""
    torch.manual_seed(0)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=9216, dropout=dropout))
    root = PureLoss(lm).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 8000, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100
    return root, lm.model.layers, lambda m: m(ids, labels)[0]


def varsr_case(drop_path: float):
    """(model, blocks, loss fn) for the tiny VARSR transformer against its frozen tokenizer."""
    torch.manual_seed(0)
    model, vqvae = build_models(model_config("tiny", drop_path_rate=drop_path))
    model.train()
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1
    lr = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1
    label = torch.tensor([0, 1])
    return model, model.blocks, lambda m: varsr_loss(m, vqvae, hr, lr, label, diff_weight=2.0)[0]


CASES = {"pure": pure_case, "varsr": varsr_case}


def loss_and_grads(model, fn, seed=123):
    torch.manual_seed(seed)  # same dropout / drop-path / refiner-noise draws in every variant
    model.zero_grad(set_to_none=True)
    loss = fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ref, got, rtol=1e-5, atol=1e-6):
    (l0, g0), (l1, g1) = ref, got
    torch.testing.assert_close(l1, l0, rtol=rtol, atol=atol)
    assert set(g0) == set(g1) and len(g0) > 10
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=rtol, atol=atol, msg=name)


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that actually execute (ops served from a checkpoint cache do not)."""

    def __init__(self):
        super().__init__()
        self.n = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------ tests
def test_dtype_map_and_ac_modes():
    assert par.get_dtype("bf16") is torch.bfloat16 and par.get_dtype("fp16") is torch.float16
    assert par.get_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="fp32 | bf16 | fp16"):
        par.get_dtype("float8")
    # booleans from YAML (and OmegaConf's str rendering of them) map onto the modes
    assert [par.ac_mode(v) for v in (True, "True", "full", False, "False", "none", "selective")] == [
        "full",
        "full",
        "full",
        "none",
        "none",
        "none",
        "selective",
    ]
    with pytest.raises(ValueError, match="activation_checkpointing"):
        par.ac_mode("some")


@pytest.mark.parametrize("app", ["pure", "varsr"])
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gradients_equal_no_ac(app, mode):
    """With dropout / drop-path on, so recomputation must replay the same random masks."""
    model, _, fn = CASES[app](0.1)
    ref = loss_and_grads(model, fn)
    names = [n for n, _ in model.named_parameters()]
    model, blocks, fn = CASES[app](0.1)
    assert par.apply_activation_checkpointing(blocks, mode) == len(blocks)
    assert par.apply_activation_checkpointing(blocks, mode) == 0  # idempotent
    assert [n for n, _ in model.named_parameters()] == names  # official names kept
    assert_same(ref, loss_and_grads(model, fn))


@pytest.mark.parametrize("app", ["pure", "varsr"])
def test_selective_saves_matmuls_and_recomputes_the_rest(app):
    """Backward under full AC re-runs every block matmul; selective AC re-runs none of them, but
    still recomputes element-wise ops (so it is not simply 'no checkpointing')."""
    counts = {}
    for mode in ("none", "full", "selective"):
        model, blocks, fn = CASES[app](0.0)
        par.apply_activation_checkpointing(blocks, mode)
        torch.manual_seed(0)
        loss = fn(model)
        with OpCounter() as c:
            loss.backward()
        counts[mode] = c.n
    mm = {m: counts[m]["mm"] + counts[m]["addmm"] + counts[m]["bmm"] for m in counts}
    assert mm["full"] > mm["none"]
    assert mm["selective"] == mm["none"]
    elementwise = {m: counts[m]["mul"] + counts[m]["add"] for m in counts}
    assert elementwise["selective"] > elementwise["none"]


@pytest.mark.parametrize("app", ["pure", "varsr"])
def test_compiled_blocks_match_eager(app):
    """torch.compile per block (after selective AC, the order both apps use) == eager, fp32 1e-5."""
    model, _, fn = CASES[app](0.0)
    ref = loss_and_grads(model, fn)
    model, blocks, fn = CASES[app](0.0)
    par.apply_activation_checkpointing(blocks, "selective")
    assert par.compile_blocks(blocks, backend="aot_eager") == len(blocks)
    assert all(b._compiled_call_impl is not None for b in blocks)
    got = loss_and_grads(model, fn)
    assert_same(ref, got)
    assert "_orig_mod" not in "".join(model.state_dict())  # checkpoint keys unchanged


@pytest.mark.slow
def test_compiled_blocks_match_eager_inductor():
    """One real inductor (C++ codegen) case on the PURE decoder layers."""
    model, _, fn = pure_case(0.0)
    with torch.no_grad():
        ref = fn(model)
    model, blocks, fn = pure_case(0.0)
    par.compile_blocks(blocks, backend="inductor")
    with torch.no_grad():
        got = fn(model)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


class FakeCudaParam:
    device = torch.device("cuda")


def test_fused_adamw_only_on_cuda(monkeypatch):
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert par.fused_adamw(None, cpu) is False
    assert par.fused_adamw(None, [FakeCudaParam(), FakeCudaParam()]) is True
    assert par.fused_adamw(None, [FakeCudaParam(), cpu[0]]) is False  # offloaded / mixed: portable kernel
    assert par.fused_adamw(False, [FakeCudaParam()]) is False and par.fused_adamw(True, cpu) is True
    # both apps' optimizer builders pass the decision on to torch.optim.AdamW
    seen = []

    class Recorder:
        def __init__(self, params, **kw):
            seen.append(kw.get("fused"))

    import pure.optim
    import varsr.optim
    from pure.config import PureOptimConfig

    monkeypatch.setattr(torch.optim, "AdamW", Recorder)
    pure.optim.make_optimizer([FakeCudaParam()], PureOptimConfig())
    pure.optim.make_optimizer(cpu, PureOptimConfig())
    model, _ = build_models("tiny")
    varsr.optim.build_optimizer(model, lr=1e-4)
    assert seen == [True, None, None]


def test_loader_kwargs_feed_the_device():
    cpu = par.loader_kwargs(0, "cpu")
    assert cpu == {"num_workers": 0, "pin_memory": False}
    gpu = par.loader_kwargs(4, "cuda", prefetch_factor=3)
    assert gpu == {"num_workers": 4, "pin_memory": True, "prefetch_factor": 3, "persistent_workers": True}
    assert par.loader_kwargs(2, torch.device("cuda", 1), pin_memory=False)["pin_memory"] is False


def test_varsr_loader_uses_the_data_options(tmp_path):
    from varsr.config import tiny_train_config
    from varsr.data import build_train_dataset, build_train_loader

    cfg = tiny_train_config(str(tmp_path))
    cfg.data.num_workers, cfg.data.prefetch_factor, cfg.data.persistent_workers = 1, 3, True
    loader, _ = build_train_loader(build_train_dataset(cfg), cfg, 1, 0, device="cpu")
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers, loader.pin_memory) == (
        1,
        3,
        True,
        False,
    )


def test_varsr_degradation_runs_batched_on_the_training_device(tmp_path, monkeypatch):
    """Loader workers only read/crop and sample kernels; the Real-ESRGAN pipeline runs once per
    micro-batch on the whole batch, on the training device (BatchMaker), not per image in workers."""
    from common.degradation.pipeline import Degrader
    from varsr.config import tiny_train_config
    from varsr.data import BatchMaker, build_train_dataset, build_train_loader, step_generator

    calls = []
    apply = Degrader.apply

    def spy(self, gt, kernels, params):
        calls.append((gt.shape[0], gt.device.type))
        return apply(self, gt, kernels, params)

    monkeypatch.setattr(Degrader, "apply", spy)
    cfg = tiny_train_config(str(tmp_path))
    cfg.data.lq_mode, cfg.data.batch_size = "degrade", 3
    loader, _ = build_train_loader(build_train_dataset(cfg), cfg, 1, 0, device="cpu")
    batch = next(iter(loader))
    assert not calls and "lq" not in batch and batch["kernels"]["kernel1"].shape[0] == 3
    hr, lr, _ = BatchMaker(cfg, torch.device("cpu"))(batch, step_generator(torch.device("cpu"), 0, 0, 0, 0))
    assert calls == [(3, "cpu")] and lr.shape == hr.shape == (3, 3, 96, 96)


def test_config_switches_reach_the_blocks():
    """`parallel.compile` / `parallel.activation_checkpointing` through each app's parallelize code."""
    from common.dist import DistInfo
    from pure.config import ParallelConfig as PureParallel
    from pure.config import PureOptimConfig
    from pure.parallelize import build_engine
    from varsr.config import ParallelConfig as VarsrParallel
    from varsr.parallelize import parallelize

    one = DistInfo(0, 1, 0, torch.device("cpu"), None)
    root, blocks, _ = pure_case(0.0)
    build_engine(
        root,
        root.lm,
        PureOptimConfig(),
        PureParallel(backend="none", compile=True, compile_backend="aot_eager", activation_checkpointing="selective"),
        one,
        micro_batch=1,
    )
    model, vblocks, _ = varsr_case(0.0)
    parallelize(
        model,
        VarsrParallel(backend="none", compile=True, compile_backend="aot_eager", activation_checkpointing="True"),
        one,
    )
    assert all(b._compiled_call_impl is not None and b._arsr_ac == "selective" for b in blocks)
    assert all(b._compiled_call_impl is not None and b._arsr_ac == "full" for b in vblocks)
    with pytest.raises(ValueError, match="DeepSpeed runs eager"):
        build_engine(root, root.lm, PureOptimConfig(), PureParallel(backend="deepspeed", compile=True), one, 1)
