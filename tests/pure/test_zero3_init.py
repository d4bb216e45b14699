"""DeepSpeed ZeRO-3 start-up never builds the whole model on a rank (issue 18 row 12).

Two gloo ranks (torchrun) build the PURE Trainer for ZeRO-3, once from a random init in the
shipped bf16 and once from HF shards with the vocabulary extension in fp32. A parameter
registration hook records, every time a module registers a parameter, how many parameter
elements the rank holds whole: before the fix every rank reached the whole model; with
`deepspeed.zero.Init` the peak is one module (next to its 1/world shards). The gathered weights equal the
plain single-process build (the independent reference: same seed, same files), and each rank
ends up holding 1/world of the elements. Training equality: tests/pure/test_parallel.py (ZeRO-3).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import json, os, sys, weakref
    import torch
    sys.path.insert(0, {root!r})
    from torch.nn.modules.module import register_module_parameter_registration_hook
    from tests.pure.test_train import make_cfg
    from pure.train import Trainer
    torch.set_num_threads(1)
    out = __import__("pathlib").Path(sys.argv[1])
    live, peak = [], [0]

    def on_register(module, name, param):
        live.append(weakref.ref(param))
        # elements held whole (a ZeRO-3 partitioned parameter's .data is empty; its shard is ds_tensor)
        peak[0] = max(peak[0], sum(p.data.numel() for p in (r() for r in live) if p is not None))

    register_module_parameter_registration_hook(on_register)
    cases = {{
        "random_bf16": {{"parallel.param_dtype": "bf16"}},
        "hf_fp32": {{"init.from_hf": str(out / "init_hf"), "init.extend_vocab_from": {small}}},
    }}
    rank = int(os.environ["RANK"])
    result = {{}}
    for name, over in cases.items():
        live.clear(); peak[0] = 0
        cfg = make_cfg(out, **{{"parallel.backend": "deepspeed", "parallel.zero_stage": 3,
                               "run.run_dir": str(out / ("run_" + name)), **over}})
        tr = Trainer(cfg)
        params = list(tr.lm.parameters())
        shards = sum(p.ds_tensor.numel() for p in params)
        total = sum(p.ds_numel for p in params)
        module = max(sum(p.ds_numel for p in m.parameters(recurse=False)) for m in tr.lm.modules())
        whole = sum(p.data.numel() for p in params)  # materialised outside a gather (0: all partitioned)
        sd = tr.engine.full_model_state_dict()
        if rank == 0:
            torch.save({{k.removeprefix("lm."): v for k, v in sd.items()}}, out / (name + ".pt"))
        result[name] = dict(peak=peak[0], shards=shards, total=total, module=module, whole=whole)
    (out / f"rank{{rank}}.json").write_text(json.dumps(result))
""")


@pytest.mark.slow
def test_zero3_builds_partitioned_and_equals_the_plain_build(tmp_path):
    from pure.build import build_lm
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import save_hf_shards
    from tests.pure.test_train import VOCAB, make_cfg

    small = VOCAB - 512
    torch.manual_seed(3)
    init_lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=small))
    save_hf_shards(init_lm, tmp_path / "init_hf", config=init_lm.config, dtype=torch.float32)
    make_cfg(tmp_path)  # writes the records once, before the ranks race for them
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=root, small=small))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]

    refs = {
        "random_bf16": {},
        "hf_fp32": {"init.from_hf": str(tmp_path / "init_hf"), "init.extend_vocab_from": small},
    }
    for name, over in refs.items():
        torch.manual_seed(0)  # Trainer seeds run.seed=0 on every rank before building
        ref = build_lm(make_cfg(tmp_path, **over), torch.device("cpu")).state_dict()
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert sorted(got) == sorted(ref)
        dtype = torch.bfloat16 if name == "random_bf16" else torch.float32
        for k, v in ref.items():
            assert got[k].dtype == dtype and torch.equal(got[k], v.to(dtype)), (name, k)
        total = sum(v.numel() for v in ref.values())
        for info in (r[name] for r in ranks):
            assert info["total"] == total and info["whole"] == 0
            assert abs(info["shards"] - total / 2) <= 64  # each rank's share (padding to the world size)
            if name == "random_bf16":
                # never more than one module's parameters whole (the 9,216 x 64 embedding here) next
                # to the shards; the plain build held all `total` (~1.28 M elements) on every rank
                assert info["peak"] <= info["module"] < total / 2, info
            else:  # the vocabulary extension holds the old and new embedding and lm_head whole, nothing more
                assert info["peak"] == 2 * (small + VOCAB) * 64, info
