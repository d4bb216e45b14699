"""Every PURE training command the README ships, run as shipped (issue 18, "what to build" 2).

Each command is the README's own line (checked to be in README.md) plus SIZE overrides only: a
tiny model (width, depth, heads, vocabulary), paths of tiny token shards and a tiny starting HF
checkpoint, steps, checkpoint/log intervals, workers, the global batch (the recipe's 128 scaled to
the tiny data; the launcher derives the accumulation) and the launcher's `nproc=N run.device=cpu`.
`tests/shipped.py` refuses any other key, so dtype (bf16), backend, activation checkpointing,
dropout, autocast and the DeepSpeed configs stay as shipped. PURE training has no validation step in its configuration.

Each command runs through `launch/train_pure.py` (self-spawned torchrun, gloo ranks), is killed
(SIGKILL) after its first checkpoint, resumes on the other world size to the end, and the final
checkpoint is exported with `launch/export_checkpoint.py app=pure`; that export must equal the
one the training run wrote itself (two independent paths: checkpoint files vs gathered weights).
FSDP2 with and without `parallel.cpu_offload` must log the same losses and gradient norms on two
ranks (issue 18 row 4: clipping all-reduces the offloaded CPU norms).
"""

from __future__ import annotations

import json
import signal

import pytest
import torch
import yaml

from tests import shipped

pytestmark = pytest.mark.slow

STEPS, EVERY = 6, 2
README_COMMANDS = {  # name: (README arguments, first world size, resume world size)
    "fsdp2": (["+exp=lsdir_ffhq"], 2, 1),
    "fsdp2_offload": (["+exp=lsdir_ffhq", "parallel.cpu_offload=true"], 2, 1),
    "zero2_offload": (["+exp=[lsdir_ffhq,zero2]", "parallel.cpu_offload=true"], 1, 2),
    "zero3": (["+exp=[lsdir_ffhq,zero3]"], 2, 1),
}
README_LINES = {  # the README line each command comes from
    "fsdp2": "python launch/train_pure.py +exp=lsdir_ffhq\n",
    "fsdp2_offload": "python launch/train_pure.py +exp=lsdir_ffhq parallel.cpu_offload=true ",
    "zero2_offload": "python launch/train_pure.py '+exp=[lsdir_ffhq,zero2]' parallel.cpu_offload=true ",
    "zero3": "launch/train_pure.py '+exp=[lsdir_ffhq,zero3]'",
}
SIZE_KEYS = {
    "model.hidden_size": None,
    "model.intermediate_size": None,
    "model.num_hidden_layers": None,
    "model.num_attention_heads": None,
    "model.num_key_value_heads": None,
    "model.vocab_size": None,
    "data.meta": None,
    "data.num_workers": None,
    "init.from_hf": None,
    "run.run_dir": None,
    "export.hf_dir": None,
    "schedule.max_steps": shipped.positive,
    "checkpoint.every_steps": shipped.positive,
    "logging.every_steps": shipped.positive,
    "optim.global_batch": shipped.positive,
    "nproc": shipped.positive,
    "run.device": lambda v: v == "cpu",
}
VOCAB = 9216  # every PURE special id fits (tests/pure/test_train.py)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two token sources of one type (as configs/pure/data/lsdir_ffhq.yaml) and a bf16 HF start."""
    from pure.data import merge_indices, write_shard
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import save_hf_shards
    from tests.pure.test_train import make_records

    root = tmp_path_factory.mktemp("pure_shipped")
    meta = []
    for i, name in enumerate(["lsdir", "ffhq10k"]):
        write_shard(root / name / "shard_0", make_records(32, seed=i))
        meta.append({"path": str(merge_indices(root / name)), "type": "sr"})
    (root / "data.yaml").write_text(yaml.safe_dump({"META": meta}))
    torch.manual_seed(0)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    save_hf_shards(lm, root / "init_hf", config=lm.config, dtype=torch.bfloat16)  # as the released PURE
    return root


def _sizes(root, run_dir, nproc) -> list[str]:
    args = [
        "model.hidden_size=64",
        "model.intermediate_size=172",
        "model.num_hidden_layers=2",
        "model.num_attention_heads=4",
        "model.num_key_value_heads=4",
        f"model.vocab_size={VOCAB}",
        f"data.meta={root / 'data.yaml'}",
        "data.num_workers=0",
        f"init.from_hf={root / 'init_hf'}",
        f"run.run_dir={run_dir}",
        f"export.hf_dir={run_dir / 'hf'}",
        f"schedule.max_steps={STEPS}",
        f"checkpoint.every_steps={EVERY}",
        "logging.every_steps=1",
        "optim.global_batch=16",  # recipe: 128; 4 x 2 accumulation x 2 ranks, 4 x 4 x 1 rank after the resume
        f"nproc={nproc}",
        "run.device=cpu",
    ]
    shipped.check_overrides(args, SIZE_KEYS)
    return args


def _metrics(run_dir) -> dict[int, dict]:
    """First logged record of every step (the killed run's, before the resumed run relogs a step)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out.setdefault(row["step"], row)
    return out


def _load_hf(path) -> dict:
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import load_hf_shards

    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    load_hf_shards(lm, path, dtype=torch.bfloat16)  # strict: every key, every shape
    return lm.state_dict()


_RUNS: dict[str, dict] = {}


def _run_shipped(name, root, tmp_path) -> dict:
    from common.train_state import read_meta, step_dir
    from launch.export_checkpoint import main as export_main

    readme = (shipped.REPO / "README.md").read_text()
    assert README_LINES[name] in readme, f"README no longer ships {README_LINES[name]!r}"
    cmd, first, second = README_COMMANDS[name]
    run_dir = tmp_path / "run"
    proc = shipped.start("launch/train_pure.py", cmd + _sizes(root, run_dir, first), tmp_path / "first.log")
    try:
        shipped.wait_for(lambda: shipped.newest_step(run_dir) is not None, proc, timeout=400)
    finally:
        shipped.kill(proc, signal.SIGKILL)  # the launcher and every rank at once, right after the first checkpoint
    killed_at = shipped.newest_step(run_dir)
    assert killed_at is not None and killed_at < STEPS, shipped.tail(tmp_path / "first.log")
    assert read_meta(step_dir(run_dir, killed_at))["world_size"] == first

    code, text = shipped.run("launch/train_pure.py", cmd + _sizes(root, run_dir, second), tmp_path / "second.log")
    assert code == 0, text[-4000:]
    assert f"at step {killed_at}" in text  # resumed, not restarted
    assert shipped.newest_step(run_dir) == STEPS
    assert read_meta(step_dir(run_dir, STEPS))["world_size"] == second
    if cmd[0] != "+exp=lsdir_ffhq":  # DeepSpeed reads another world size's files through the universal form
        assert "universal" in text

    export_main(["app=pure", f"run_dir={run_dir}", f"out={tmp_path / 'export'}"])
    exported, trained = _load_hf(tmp_path / "export"), _load_hf(run_dir / "hf")
    for k, v in trained.items():
        assert torch.equal(exported[k], v), k
    metrics = _metrics(run_dir)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics.values())
    _RUNS[name] = metrics
    return metrics


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_shipped_command_trains_resumes_on_other_world_size_and_exports(name, inputs, tmp_path):
    _run_shipped(name, inputs, tmp_path)


def test_fsdp2_cpu_offload_matches_fsdp2_on_two_ranks(inputs, tmp_path):
    """Issue 18 row 4 on real ranks: the offloaded run's clipping norm (all-reduced from CPU shards)
    and losses equal the plain FSDP2 run's for the steps both ran on 2 ranks before the kill."""
    for name in ("fsdp2", "fsdp2_offload"):
        if name not in _RUNS:
            _run_shipped(name, inputs, tmp_path / name)
    plain, offload = _RUNS["fsdp2"], _RUNS["fsdp2_offload"]
    for step in range(1, EVERY + 1):  # logged by the 2-rank runs (killed after step EVERY's checkpoint)
        for key in ("loss", "grad_norm"):
            assert offload[step][key] == pytest.approx(plain[step][key], rel=1e-6), (step, key)
