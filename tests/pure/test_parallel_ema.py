"""EMA under 2-rank FSDP2 (gloo, CPU): each rank averages only its parameter shards, the average
is saved/restored with the sharded training state, and the consolidated export after a
pre-emption + resume equals the single-process EMA export (fp32)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {root!r})
    from tests.pure.test_train import make_cfg
    from pure.train import main
    torch.set_num_threads(1)
    backend, out, accum, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cfg = make_cfg(out, **{{"parallel.backend": backend, "optim.grad_accum": accum, "data.batch_size": 1,
                           "schedule.epochs": 2, "ema.enabled": True, "ema.decay": 0.5, "export.dtype": "fp32",
                           "run.run_dir": str(out / ("run_" + backend)),
                           "export.hf_dir": str(out / ("hf_" + backend))}})
    def on_step(step, loss):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
    main(cfg, on_step=on_step)
""")


def _run(tmp_path, backend, nproc, accum, kill_at=0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = (
        [sys.executable, str(script)]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    )
    r = subprocess.run(
        cmd + [backend, str(tmp_path), str(accum), str(kill_at)], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_sharded_ema_resume_matches_single_process(tmp_path):
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import load_hf_shards

    _run(tmp_path, "none", 1, 2)  # one process, 2 x micro-batch 1 == 2 ranks x micro-batch 1
    _run(tmp_path, "fsdp2", 2, 1, kill_at=3)
    assert not (tmp_path / "hf_fsdp2").exists()  # pre-empted: no export yet
    _run(tmp_path, "fsdp2", 2, 1)
    ref, got = (ChameleonForCausalLM(chameleon_config("tiny", vocab_size=9216)) for _ in range(2))
    load_hf_shards(ref, tmp_path / "hf_none")
    load_hf_shards(got, tmp_path / "hf_fsdp2")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, rtol=1e-4, atol=1e-5)
