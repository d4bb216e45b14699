"""DeepSpeed ZeRO-1/2 checkpoints resume and export (issue 18 row 6).

Their optimizer files pickle `deepspeed.utils.tensor_fragment.fragment_address` (each parameter's
slice of the flat partition), which the safe loader refused: every ZeRO-1/2 run, the one-GPU
ZeRO-Offload recipe included, died at its first resume, and its export failed too. Here, in a
torchrun world of one (gloo), a run killed at step 2 resumes to the same losses as the
uninterrupted run, and `launch/export_checkpoint.py` gives exactly the weights the run exported
itself at the end.
"""

import os
import signal

import pytest
import torch

from tests.common.test_cpu_offload import world_of_one  # noqa: F401 (fixture)
from tests.pure.test_train import VOCAB, make_cfg

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_resume_and_export(tmp_path, world_of_one, stage):  # noqa: F811
    from launch.export_checkpoint import main as export_main
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import load_hf_shards
    from pure.train import Trainer

    def cfg(name):
        over = {"parallel.backend": "deepspeed", "parallel.zero_stage": stage, "schedule.max_steps": 4}
        over.update({"checkpoint.every_steps": 2, "export.dtype": "fp32", "run.run_dir": str(tmp_path / name)})
        return make_cfg(tmp_path, **over, **{"export.hf_dir": str(tmp_path / name / "hf")})

    def stop_at_2(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with world_of_one():
        ref = Trainer(cfg("ref")).fit()["losses"]
    with world_of_one():
        first = Trainer(cfg("run")).fit(stop_at_2)
    assert first["step"] == 2 and first["preempted"]
    with world_of_one():  # a new process: nothing but the files carries over
        tr = Trainer(cfg("run"))
        assert tr.step == 2  # resumed from the ZeRO files, not restarted
        second = tr.fit()["losses"]
    torch.testing.assert_close(torch.tensor(first["losses"] + second), torch.tensor(ref), rtol=1e-5, atol=1e-6)

    export_main(["app=pure", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'export'}"])
    a, b = (ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB)) for _ in range(2))
    load_hf_shards(a, tmp_path / "export")
    load_hf_shards(b, tmp_path / "run" / "hf")
    for k, v in b.state_dict().items():
        assert torch.equal(a.state_dict()[k], v), k
