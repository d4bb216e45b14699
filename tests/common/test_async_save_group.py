"""Row 5 of issue 18: ``checkpoint.async_save=true`` in a world of one on NCCL.

DCP's ``async_save`` asserts that the group it is given has a CPU backend. With NCCL the default
group is CUDA-only, and the extra gloo group used to exist only for world > 1, so a one-GPU run
(e.g. the FSDP2 offload recipe, a torchrun world of one) crashed at its first save. No GPU here:
a backend registered for ``cuda`` only (gloo underneath) reproduces exactly the device-type check
NCCL fails, in a real world of one.
"""

import torch
import torch.distributed as dist

from common.dist import destroy_distributed
from common.train_state import TrainState, list_steps

_BACKEND = "cudaonlytest"


def _cuda_only_backend(store, rank, size, timeout):
    return dist.ProcessGroupGloo(store, rank, size, timeout)


def _init_cuda_only_world_of_one():
    if _BACKEND not in dist.Backend.backend_list:
        dist.Backend.register_backend(_BACKEND, _cuda_only_backend, devices=["cuda"])
    dist.init_process_group(backend=_BACKEND, store=dist.HashStore(), rank=0, world_size=1)
    # the premise: the default group offers no CPU backend, as with backend="nccl"
    assert torch.device("cpu") not in dist.distributed_c10d._get_default_group()._device_types


def test_async_save_in_a_world_of_one_without_cpu_backend(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    _init_cuda_only_world_of_one()
    try:
        state = TrainState(tmp_path, model, opt, async_save=True)
        state.save(1)
        state.wait()
        group = state._ckpt_group()
        assert group is not None and torch.device("cpu") in group._device_types
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        got = TrainState(tmp_path, model, opt).resume()
    finally:
        destroy_distributed()
    assert [s for s, _ in list_steps(tmp_path)] == [1] and got.step == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k
