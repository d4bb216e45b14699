"""DeepSpeed ZeRO-3 and FSDP2 on 2 CPU processes (gloo, torchrun) reproduce the single-process loss
curve for the same global batch (spec pure.md §12.8). fp32 everywhere; the only differences are
reduction order (all-reduce vs local accumulation), which Adam at lr 3e-3 amplifies to ~1e-5
relative after a few steps, hence rtol 1e-4. The first DeepSpeed run on a machine JIT-builds its
shared-memory comm op (cached in ~/.cache/torch_extensions afterwards)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_train import make_cfg
    from pure.train import main
    from pathlib import Path
    torch.set_num_threads(1)
    backend, out, accum, mb = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kill_at = int(sys.argv[5])
    cfg = make_cfg(out, **{{"parallel.backend": backend, "optim.grad_accum": accum, "data.batch_size": mb,
                           "schedule.epochs": 2, "parallel.activation_checkpointing": True, "parallel.zero_stage": 3,
                           "run.run_dir": str(out / ("run_" + backend)),
                           "export.hf_dir": str(out / ("hf_" + backend))}})
    import os, signal
    def on_step(step, loss):  # simulate a scheduler's pre-emption signal on every rank
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
    res = main(cfg, on_step=on_step)
    if os.environ.get("RANK", "0") == "0":
        f = out / (backend + ".json")
        prev = json.loads(f.read_text()) if f.exists() else []
        f.write_text(json.dumps(prev + res["losses"]))
""")


def _run(tmp_path, backend, nproc, accum, mb, kill_at=0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if nproc == 1 and backend != "deepspeed":  # DeepSpeed always wants a launcher's environment
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    r = subprocess.run(
        cmd + [backend, str(tmp_path), str(accum), str(mb), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp_path / f"{backend}_{nproc}.log").write_text(r.stdout + r.stderr)
    return json.loads((tmp_path / f"{backend}.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # one process, micro-batch 1, 2 accumulation steps == 2 ranks x micro-batch 1
    return _run(tmp_path_factory.mktemp("ref"), "none", 1, 2, 1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["deepspeed", "fsdp2"])
def test_two_process_matches_single_process(tmp_path, reference, backend):
    losses = _run(tmp_path, backend, 2, 1, 1)
    assert len(losses) == len(reference) == 8
    np.testing.assert_allclose(losses, reference, rtol=1e-4, atol=1e-4)
    assert reference[-1] < reference[0]
    # the consolidated HF export (gathered from ZeRO-3 partitions / FSDP2 shards) loads strictly
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import load_hf_shards

    load_hf_shards(ChameleonForCausalLM(chameleon_config("tiny", vocab_size=9216)), tmp_path / f"hf_{backend}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["deepspeed", "fsdp2"])
def test_preempt_and_resume(tmp_path, reference, backend):
    """SIGTERM at step 3 on both ranks -> checkpoint (DeepSpeed: its per-rank engine files; FSDP2:
    one DCP shard file per rank) in a temp dir renamed when complete -> resume -> same curve."""
    first = _run(tmp_path, backend, 2, 1, 1, kill_at=3)
    ckpt = tmp_path / f"run_{backend}/checkpoints/step_00000003"
    assert len(first) == 3 and (ckpt / "COMPLETE").is_file()
    if backend == "deepspeed":
        assert len(list((ckpt / "ds").glob("*model_states.pt"))) == 2
    else:
        assert sorted(p.name for p in (ckpt / "state").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    both = _run(tmp_path, backend, 2, 1, 1)
    np.testing.assert_allclose(both, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["deepspeed", "fsdp2"])
def test_resume_on_one_process_past_a_planted_checkpoint(tmp_path, reference, backend):
    """2 ranks pre-empted at step 3; then a planted newest checkpoint (step 4: a copy whose DeepSpeed
    model-states file / DCP index runs code when unpickled); then resume on ONE process with the same
    global batch (DeepSpeed: through its universal checkpoint). The payload never runs, the run falls
    back to step 3 with a warning naming the bad file, and the loss curve equals the uninterrupted one."""
    from tests.common.test_train_state import plant_pickle, plant_torch

    _run(tmp_path, backend, 2, 1, 1, kill_at=3)
    ckpts = tmp_path / f"run_{backend}" / "checkpoints"
    bad = ckpts / "step_00000004"
    shutil.copytree(ckpts / "step_00000003", bad)
    (bad / "meta.json").write_text((bad / "meta.json").read_text().replace('"step": 3', '"step": 4'))
    marker = tmp_path / "PWNED"
    if backend == "deepspeed":
        planted = bad / "ds" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
        plant_torch(planted, marker)
    else:
        planted = bad / "state" / ".metadata"
        plant_pickle(planted, marker)
    losses = _run(tmp_path, backend, 1, 2, 1)
    assert not marker.exists()
    log = (tmp_path / f"{backend}_1.log").read_text()
    assert "skipping checkpoint step_00000004" in log and planted.name in log, log[-2000:]
    if backend == "deepspeed":
        assert (ckpts / "step_00000003" / "universal" / "zero").is_dir()  # converted for the new world size
        assert (ckpts / "step_00000008" / "ds").is_dir()  # the 1-process run saves normal engine files again
    # the bad checkpoint is left for inspection and never counts towards `keep`: the good one stays
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000003", "step_00000004", "step_00000008"]
    np.testing.assert_allclose(losses, reference, rtol=1e-4, atol=1e-4)
