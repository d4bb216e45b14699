"""Train PURE: `python launch/train_pure.py +exp=lsdir_ffhq [key=value ...]`.

One GPU: plain python. Many: `torchrun --nproc_per_node 8 launch/train_pure.py +exp=lsdir_ffhq`
(FSDP2, default) or `... +exp=zero3` / the `deepspeed` launcher. Every rank composes the same
config with Hydra's compose API (no per-rank output folders); schema: pure/config.py.
"""
import sys

from common.config import compose_config, validate
from pure.config import PureTrainConfig
from pure.train import main


def run(argv: list[str]) -> dict:
    # The deepspeed launcher appends --local_rank=N; torchrun-style env vars carry the same information.
    overrides = [a for a in argv if not a.startswith("--local_rank")]
    cfg = validate(PureTrainConfig, compose_config("pure", "train", overrides))
    return main(cfg)


if __name__ == "__main__":
    run(sys.argv[1:])
