"""common.dist collective helpers: values on 2 gloo ranks, device placement, and no direct collectives in apps.

The device test monkeypatches the backend lookup: NCCL needs CUDA tensors, which cannot be
exercised on a CPU machine, so the selection rule is checked instead of a real NCCL run.
"""

import ast
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import common.dist as cd

ROOT = Path(__file__).resolve().parents[2]
# Every torch.distributed call that moves data between ranks (plus barrier, which synchronises them).
COLLECTIVES = {
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "gather_object",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "barrier",
    "monitored_barrier",
    "batch_isend_irecv",
    "all_reduce_coalesced",
    "send_object_list",
    "recv_object_list",
}


def _direct_collectives(path: Path) -> list[str]:
    """``file:line name`` for every collective reached through torch.distributed in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    aliases, imported = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch.distributed":
                    aliases.add(a.asname or "torch.distributed")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch.distributed", "torch"):
            for a in node.names:
                if node.module == "torch" and a.name == "distributed":
                    aliases.add(a.asname or "distributed")
                elif node.module == "torch.distributed" and a.name in COLLECTIVES:
                    imported[a.asname or a.name] = a.name
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in imported:
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno} {imported[f.id]}")
        elif isinstance(f, ast.Attribute) and f.attr in COLLECTIVES:
            base = ast.unparse(f.value)
            if base in aliases or base == "torch.distributed":
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno} {f.attr}")
    return hits


def test_detector_finds_every_spelling(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import torch\nimport torch.distributed as d\nfrom torch import distributed as td\n"
        "from torch.distributed import all_reduce as ar\n"
        "torch.distributed.all_gather_object([], 1)\nd.all_reduce(x)\ntd.barrier()\nar(x)\n"
        "common_dist.all_reduce_mean(x)\n"
    )
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert [h.split()[1] for h in _direct_collectives(src)] == [
            "all_gather_object",
            "all_reduce",
            "barrier",
            "all_reduce",
        ]
    finally:
        ROOT = old


def test_apps_use_common_dist_for_every_collective():
    files = [p for d in ("pure", "varsr", "launch") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    hits = [h for p in files for h in _direct_collectives(p)]
    assert hits == [], "direct torch.distributed collectives (use common.dist helpers):\n" + "\n".join(hits)


def test_group_device_follows_backend(monkeypatch):
    assert cd.group_device() == torch.device("cpu")  # no process group
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    assert cd.group_device() == torch.device("cuda", 3)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "gloo")
    assert cd.group_device() == torch.device("cpu")


class _Stop(Exception):
    pass


def test_helpers_hand_nccl_a_cuda_tensor(monkeypatch):
    """Every tensor reaching all_reduce/barrier lives on the group's device, whatever the caller passed
    (CPU tensors, Python numbers, bools). ``meta`` stands in for ``cuda:k`` (no CUDA here); the fake
    collective records the device and stops, since nothing can be copied back from ``meta``."""
    seen = []

    def fake_all_reduce(t, op=None, group=None):
        seen.append(t.device)
        raise _Stop

    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(tdist, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(cd, "group_device", lambda group=None: torch.device("meta"))
    calls = [
        lambda: cd.all_reduce_sum(torch.tensor([1.5])),
        lambda: cd.all_reduce_mean(2.0),
        lambda: cd.all_reduce_max(torch.tensor(1.0)),
        lambda: cd.any_rank(True),
    ]
    for fn in calls:
        with pytest.raises(_Stop):
            fn()
    assert seen == [torch.device("meta")] * len(calls)


def _worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    info = cd.init_distributed("cpu")
    r = info.rank
    res = {
        "sum": cd.all_reduce_sum(torch.tensor([r + 1.0, 10.0])),
        "mean": cd.all_reduce_mean(torch.tensor([2.0 * r])),
        "mean_num": cd.all_reduce_mean(float(r)),
        "max": cd.all_reduce_max(torch.tensor([float(r), -float(r)])),
        "any_one": cd.any_rank(r == 1),
        "any_none": cd.any_rank(False),
        "gather": cd.all_gather_object({"rank": r}),
        "bcast": cd.broadcast_object(f"from{r}"),
        "bcast1": cd.broadcast_object(f"from{r}", src=1),
        "world": cd.get_world_size(),
    }
    src = torch.tensor([3.0])
    res["no_alias"] = cd.all_reduce_sum(src) is not src and float(src) == 3.0
    cd.barrier()
    torch.save(res, os.path.join(out_dir, f"r{r}.pt"))
    cd.destroy_distributed()


@pytest.mark.slow
def test_every_helper_on_two_gloo_ranks(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert torch.equal(res["sum"], torch.tensor([3.0, 20.0])) and res["sum"].device.type == "cpu"
        assert torch.equal(res["mean"], torch.tensor([1.0]))
        assert float(res["mean_num"]) == 0.5
        assert torch.equal(res["max"], torch.tensor([1.0, 0.0]))
        assert res["any_one"] is True and res["any_none"] is False
        assert res["gather"] == [{"rank": 0}, {"rank": 1}]
        assert res["bcast"] == "from0" and res["bcast1"] == "from1"
        assert res["world"] == 2 and res["no_alias"]


def test_cuda_process_group_has_a_cpu_backend(monkeypatch):
    """Issue 18 row 4: on CUDA the default group must move CPU tensors too (FSDP2 cpu_offload clips
    CPU gradient shards: their norms are all-reduced on the host; DCP's saver wants a CPU backend).
    No GPU here: torch's own parser reads the backend string init_distributed asks for."""
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    asked = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda backend=None, **kw: asked.update(backend=backend))
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1").items():
        monkeypatch.setenv(k, v)
    info = cd.init_distributed()
    assert info.device == torch.device("cuda", 1) and info.world_size == 2
    assert BackendConfig(Backend(asked["backend"])).get_device_backend_map() == {"cuda": "nccl", "cpu": "gloo"}
    # the helpers still put their tensors on the GPU on such a group (NCCL is the fast path)
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: Backend(asked["backend"]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert cd.group_device() == torch.device("cuda", 1)
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    assert cd.init_distributed("cpu").backend == "gloo" and asked["backend"] == "gloo"  # run.device=cpu
