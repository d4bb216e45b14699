"""torch.compile wrappers for VARSR sampling (issue 9): blocks per scale shape, refiner network.

Every block is run through one compiled function with static shapes.  Its parameters are graph
inputs, so all blocks of a model share the graph of a given scale shape: a 10-scale model compiles
about 10 graphs (a few more where FastVAR prunes), not one per block and scale.  The KV cache's
fill level is a Python int, so each scale specialises on its own static slice of the cache.  On
CUDA, inductor fuses the AdaLN / RoPE / GELU element-wise work around the matmuls; on CPU the same
graphs run through inductor's C++ backend, which is what the compiled-vs-eager tests exercise.
Model modules stay plain nn.Modules: nothing here touches the modules' own forward.
"""

from __future__ import annotations

from collections.abc import Callable

from common.compile import CompiledOrEager, raise_recompile_limit

# Distinct static shapes per sampling call: 10 scales (x2 when FastVAR splits pruned/unpruned
# blocks), plus C2I's 12-scale schedule and tiling's row batches; dynamo's default of 8 would
# silently fall back to eager after the 8th scale.
_RECOMPILE_LIMIT = 64
COMPILE_BACKEND = "inductor"  # the torch.compile backend of the sampling graphs
_compiled: dict[str, Callable] = {}


def _block_call(blk, x, cond, rope, cache, pruner):
    return blk(x, cond, rope, None, cache, pruner)


def _trunk_call(net, x, y):
    return net.trunk(x, y)


def _get(name: str, fn: Callable) -> Callable:
    if name not in _compiled:
        raise_recompile_limit(_RECOMPILE_LIMIT)
        _compiled[name] = CompiledOrEager(fn, f"VARSR {name}", dynamic=False, backend=COMPILE_BACKEND)
    return _compiled[name]


def block_runner(core, compile: bool) -> Callable:
    """fn(x, cond, rope, caches, fastvar_state) -> block-stack output for one inference step."""
    if not compile:
        return lambda x, cond, rope, caches, state: core.run_blocks(x, cond, rope, None, caches, state)
    step = _get("block", _block_call)

    def run(x, cond, rope, caches, state):
        for i, blk in enumerate(core.blocks):
            x = step(blk, x, cond, rope, caches[i], None if state is None else state(i))
        return x

    return run


def refiner_trunk(net, compile: bool) -> Callable | None:
    """Compiled `net.trunk` (one graph: the refiner's row count is fixed per call) or None (eager)."""
    if not compile:
        return None
    trunk = _get("trunk", _trunk_call)
    return lambda x, y: trunk(net, x, y)
