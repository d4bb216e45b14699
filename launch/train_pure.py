"""Train PURE: `python launch/train_pure.py +exp=lsdir_ffhq [key=value ...]`.

Plain python uses every GPU of the node: not started by torchrun / the deepspeed launcher /
SLURM, it starts `nproc` ranks itself as `torchrun --standalone --nproc_per_node=N` would
(`nproc=auto` = visible GPUs; `nproc=2 run.device=cpu` = 2 gloo ranks; common/spawn.py).
Explicit: `torchrun --nproc_per_node 8 launch/train_pure.py +exp=lsdir_ffhq` (FSDP2, default) or
`... +exp=zero3` / the `deepspeed` launcher; SLURM: `-m hydra/launcher=slurm`. One 80 GB GPU,
7B full fine-tuning: `parallel.cpu_offload=true` (FSDP2 CPU offload or, with zero2/zero3, ZeRO-Offload).
Every rank composes the same config with Hydra's compose API (no per-rank output folders);
schema: pure/config.py. Re-running the same command resumes from the newest checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.config import run_app  # noqa: E402
from pure.config import PureTrainConfig, register_configs  # noqa: E402
from pure.dry_run import TRAIN  # noqa: E402
from pure.train import main  # noqa: E402


def run(argv: list[str] | None = None) -> dict:
    register_configs()
    return run_app("pure", "train", PureTrainConfig, main, argv, typed=True, spawn_script=__file__, dry_run=TRAIN)


if __name__ == "__main__":
    run()
