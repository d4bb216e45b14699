"""Train VARSR: ``python launch/train_varsr.py [+exp=NAME] [key=value ...]``.

Plain python uses every GPU of the node: not started by torchrun / the deepspeed launcher / SLURM,
it starts ``nproc`` ranks itself as ``torchrun --standalone --nproc_per_node=N`` would
(``nproc=auto`` = visible GPUs; ``nproc=2 run.device=cpu`` = 2 gloo ranks; ``common/spawn.py``).

Every rank composes ``configs/varsr/train.yaml`` with Hydra's compose API (no ``@hydra.main``,
so no rank changes directory or creates its own output folder); rank 0 owns ``run.run_dir``.
Multi-node: ``torchrun --nnodes=N --node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT
--nproc_per_node=8 launch/train_varsr.py ...``; SLURM: ``-m hydra/launcher=slurm``.
Re-running the same command resumes from the newest checkpoint in the run directory.

Examples: ``python launch/train_varsr.py +exp=quick`` (tiny, CPU, minutes);
``torchrun --nproc_per_node=8 launch/train_varsr.py +exp=lsdir_ffhq run.run_dir=runs/varsr_d24``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.config import run_app  # noqa: E402
from common.dist import destroy_distributed  # noqa: E402
from varsr.config import VARSRTrainConfig, register_configs  # noqa: E402
from varsr.dry_run import TRAIN  # noqa: E402
from varsr.train import train  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    register_configs()
    try:
        return run_app("varsr", "train", VARSRTrainConfig, train, args, spawn_script=__file__, dry_run=TRAIN)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
