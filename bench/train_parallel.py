"""Activation checkpointing (none / full / selective) and per-block compile: step time and memory, as a Markdown table.

    python bench/train_parallel.py [--steps 3] [--compile] [--out runs/bench/train_parallel]

Both apps' real blocks through common.parallel, one training step = forward + backward + AdamW.
Each row runs in a fresh process so memory figures do not inherit an earlier row's peak:
CUDA reports ``max_memory_allocated``; CPU reports the growth of the peak RSS over the RSS once
the model and inputs exist: gradients + AdamW state (the same in every row of an app) +
activations, so differences between rows are activation memory. ``--compile`` adds rows with every block
compiled (inductor); on CUDA they are always included.
CPU sizes: PURE hidden 256 x 4 layers at 1024 tokens, VARSR depth 4 width 256 at 96 px, batch 8.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _model(app: str, device):
    """(module, blocks, loss closure) on `device` with a fixed synthetic batch."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if app == "pure":
        from pure.losses import PureLoss
        from pure.model import ChameleonForCausalLM, chameleon_config

        cfg = (
            chameleon_config("7b", num_hidden_layers=4)
            if cuda
            else chameleon_config("tiny", hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab_size=9216)
        )
        root = PureLoss(ChameleonForCausalLM(cfg)).to(device).train()
        seq = 8448 if cuda else 1024
        ids = torch.randint(4, 8196, (1 if cuda else 2, seq), device=device)
        lab = ids.clone()
        lab[:, : seq // 2] = -100
        return root, root.lm.model.layers, lambda: root(ids, lab)[0]
    from varsr.losses import varsr_loss
    from varsr.model import build_models, model_config

    mcfg = model_config("d24") if cuda else model_config("tiny", depth=4, width=256, num_heads=4)
    model, vqvae = build_models(mcfg, device=device)
    model.train()
    b, s = (4, 512) if cuda else (8, 96)
    hr = torch.rand(b, 3, s, s, device=device) * 2 - 1
    lr = torch.rand(b, 3, s, s, device=device) * 2 - 1
    label = torch.zeros(b, dtype=torch.long, device=device)
    return model, model.blocks, lambda: varsr_loss(model, vqvae, hr, lr, label)[0]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_row(app: str, ac: str, compiled: bool, steps: int) -> dict:
    from common import parallel as par

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    model, blocks, loss_fn = _model(app, device)
    par.apply_activation_checkpointing(blocks, ac)
    if compiled:
        par.compile_blocks(blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=par.fused_adamw(None, params) or None)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    base = _rss_bytes()  # model, inputs and libraries: the same for every row of an app
    step()  # warm-up: compile, allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() if cuda else _rss_bytes() - base
    return {
        "app": app,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params (M)": round(sum(p.numel() for p in params) / 1e6, 1),
        "act. ckpt": ac,
        "compiled blocks": compiled,
        "s/step": round(dt, 3),
        ("peak mem (GiB)" if cuda else "peak RSS growth (MiB)"): round(mem / 2 ** (30 if cuda else 20), 2),
    }


def main(argv=None) -> list[dict]:
    from common.logging import report_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add compiled-block rows on CPU (inductor, slow)")
    ap.add_argument("--out", default="runs/bench/train_parallel")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: app,ac,compiled -> one JSON row on stdout
    a = ap.parse_args(argv)
    if a.row:
        app, ac, comp = a.row.split(",")
        torch.set_num_threads(min(2, torch.get_num_threads()))
        print(json.dumps(run_row(app, ac, comp == "1", a.steps)))
        return []
    compiled = (False, True) if (a.compile or torch.cuda.is_available()) else (False,)
    rows = []
    for app in ("pure", "varsr"):
        for comp in compiled:
            for ac in ("none", "full", "selective"):
                cmd = [sys.executable, __file__, "--steps", str(a.steps), "--row", f"{app},{ac},{int(comp)}"]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    err = (res.stderr.strip().splitlines() or ["?"])[-1][:120]
                    rows.append({"app": app, "act. ckpt": ac, "compiled blocks": comp, "s/step": f"failed: {err}"})
                    continue
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return report_table(rows, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
