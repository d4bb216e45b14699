"""Pre-tokenise PURE training pairs: `python launch/pretokenize_pure.py +exp=quick [pretokenize.key=value ...]`.

Reads the `pretokenize:` block of the composed training config (so one experiment file holds
both). Parallel: under torchrun every rank takes items i = rank (mod world); otherwise
`pretokenize.num_workers` local processes do. Resumable (rerun the same command). Official
pickles: `pretokenize.convert_official=path/record.json pretokenize.trusted=true`.
"""

import os
import sys

import torch.multiprocessing as mp

from common.config import compose_config, one_line_errors, to_dataclass
from common.paths import check_apart
from pure.config import PretokenizeConfig
from pure.pretokenize import convert_official, finalize, prepare_images, pretokenize


def _worker(rank: int, world: int, cfg: PretokenizeConfig) -> None:
    pretokenize(cfg, rank, world, batch_size=cfg.batch_size, limit=cfg.limit)


def run(argv: list[str]):
    full = compose_config("pure", "train", argv)
    cfg = to_dataclass(PretokenizeConfig, full.pretokenize)
    folders = {
        f"pretokenize.images[{i}]": p for i, p in enumerate(cfg.images) if isinstance(p, str) and os.path.isdir(p)
    }
    check_apart(cfg.out_dir, "pretokenize.out_dir", folders)  # shards never land among the source images
    if cfg.convert_official:
        return convert_official(cfg.convert_official, cfg.out_dir, trusted=cfg.trusted, shard_size=cfg.shard_size)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun: one shard stream per rank
        from common.dist import barrier, broadcast_object, destroy_distributed, init_distributed

        info = init_distributed("cpu")  # gloo is enough for the barriers
        try:
            cfg = broadcast_object(prepare_images(cfg) if info.is_main else None)  # rank 0 writes, all read
            _worker(info.rank, info.world_size, cfg)
            barrier()
            return finalize(cfg.out_dir) if info.is_main else None
        finally:
            destroy_distributed()
    cfg = prepare_images(cfg)
    if cfg.num_workers > 1:
        mp.spawn(_worker, args=(cfg.num_workers, cfg), nprocs=cfg.num_workers, join=True)
    else:
        _worker(0, 1, cfg)
    return finalize(cfg.out_dir)


if __name__ == "__main__":
    with one_line_errors():  # user errors: one line, exit 2 (ARSR_DEBUG=1: traceback)
        print(run(sys.argv[1:]))
