"""Model building for PURE training: ChameleonForCausalLM from the config, initial weights, vocabulary growth.

`build_lm` is PURE's counterpart of `varsr.model.build_models`: the architecture comes from
`cfg.model` (a size from the registry in pure/model/config.py plus overrides), the weights from
`init.from_hf` (HF shards of PURE or Lumina-mGPT), and a 65,536-row starting point is grown to
PURE's 73,728 rows by `extend_vocabulary`.
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import dataclass_from_dict
from pure.official import load_hf_shards, read_hf_config


def model_config(cfg):
    """The ChameleonConfig of the model being trained (final vocabulary size, training dropout)."""
    from pure.model.config import ChameleonConfig, chameleon_config

    m = dict(cfg.model or {})  # a copy: popping "size" must not change the run's config
    size = m.pop("size", None)
    mcfg = chameleon_config(size, **m) if size else dataclass_from_dict(ChameleonConfig, m)
    mcfg.dropout = float(cfg.dropout)
    # The size registry knows the architecture, not the tokenizer: carry the starting checkpoint's
    # vocabulary_map over, so the export is a checkpoint the official code can open.
    base = read_hf_config(cfg.init.from_hf)
    if base and base.get("vocabulary_map") is not None:
        mcfg.vocabulary_map = base["vocabulary_map"]
    return mcfg


def build_lm(cfg, device: torch.device, meta: bool = False, partitioned=None):
    """ChameleonForCausalLM from cfg.model (+ official weights, + vocabulary extension).

    meta=True: final shapes on the meta device, no weights (filled later from rank 0).
    partitioned: a builder whose parameters live in shards from birth (ZeRO-3,
    ``pure.parallelize.Zero3Build``): ``construct()`` partitions each module as it is created
    and ``gather(params)`` makes a few whole at a time, so no rank ever holds the full model;
    the weights equal the plain build's (same draws, same files)."""
    from pure.model.chameleon import ChameleonForCausalLM

    mcfg = model_config(cfg)
    target_vocab = mcfg.vocab_size
    if meta:
        with torch.device("meta"):
            return ChameleonForCausalLM(mcfg)
    if cfg.init.extend_vocab_from:
        mcfg.vocab_size = int(cfg.init.extend_vocab_from)
    gather = None if partitioned is None else partitioned.gather
    if partitioned is None:
        lm = ChameleonForCausalLM(mcfg)
    else:
        with partitioned.construct():
            lm = ChameleonForCausalLM(mcfg)
        # The constructor's init_weights saw empty partitions: initialise module by module, whole.
        for m in lm.modules():
            own = list(m.parameters(recurse=False))
            if own:
                with gather(own):
                    lm.init_module(m)  # every rank draws (RNG streams stay in step); rank 0's values are kept
    if cfg.init.from_hf:
        load_hf_shards(lm, cfg.init.from_hf, gather=gather)
    if cfg.init.extend_vocab_from:
        extend_vocabulary(lm, target_vocab, seed=cfg.run.seed, gather=gather)
    return lm if partitioned is not None else lm.to(device)


@torch.no_grad()
def extend_vocabulary(lm: nn.Module, new_vocab: int, seed: int = 0, image_ids=(4, 8196), gather=None) -> None:
    """Grow a Lumina-mGPT-style 65,536-row model to PURE's 73,728 rows (the 8,192 extra LlamaGen slots).

    PURE does not say how its new rows were initialised. Ours: new *embedding* rows are the mean
    of the existing image-token rows (ids 4..8195) plus Gaussian noise with their per-dimension
    std, so new codes start inside the image-token cluster; new *lm_head* rows are zero, as
    Lumina-mGPT's starting-point builder zeroes image-token rows of lm_head: the new ids start
    with logit 0 and are learnt from there, without disturbing text/old-image predictions.

    `gather` (partitioned parameters, see `build_lm`): the two old matrices are gathered to be
    read; the new modules are whole until DeepSpeed's initialize partitions them.
    """
    import contextlib

    old_e, old_h = lm.model.embed_tokens.weight, lm.lm_head.weight
    with contextlib.nullcontext() if gather is None else gather([old_e, old_h], modify=False):
        old_v, c = old_e.shape
        if new_vocab <= old_v:
            raise ValueError(f"extend_vocabulary: new size {new_vocab} must exceed the current {old_v}")
        g = torch.Generator().manual_seed(seed)
        img = old_e[image_ids[0] : image_ids[1]].float()
        mu, sd = img.mean(0), img.std(0)
        extra = mu + sd * torch.randn(new_vocab - old_v, c, generator=g)
        emb = nn.Embedding(new_vocab, c, dtype=old_e.dtype, device=old_e.device)
        emb.weight.copy_(torch.cat([old_e, extra.to(old_e)]))
        head = nn.Linear(c, new_vocab, bias=False, dtype=old_h.dtype, device=old_h.device)
        zeros = torch.zeros(new_vocab - old_v, c, dtype=old_h.dtype, device=old_h.device)
        head.weight.copy_(torch.cat([old_h, zeros]))
    lm.model.embed_tokens, lm.lm_head = emb, head
    lm.config.vocab_size = new_vocab
