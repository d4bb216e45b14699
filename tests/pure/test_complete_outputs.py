"""PURE outputs made of several files: a killed run leaves nothing that looks complete.

- Folder sampling writes ``<name>.png`` + ``<name>.json``; ``skip_existing`` keeps a name only when
  both exist. A run redoing an older folder (``overwrite=true``, another seed), killed between the two
  writes, then resumed with ``skip_existing=true`` must end with exactly a clean run's files (catches
  a new image kept beside the older run's record).
- The HF export (shards + index + config.json): re-exporting over an older export and being killed
  after the first shard must not leave an index that loads a mix of old and new shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.data.io import write_image
from tests.common.test_complete_outputs import Killed, _files, _kill_after


def _stub(monkeypatch):
    """Loaders and restorer replaced: image = (LR brightness + seed) mod 256, record names the seed."""
    import pure.evaluate as pe

    class Restorer:
        scale = None

        def restore(self, imgs, generator):
            seed = generator.initial_seed()
            out = []
            for img in imgs:
                h, w = img.shape[:2]
                image = torch.full((3, 4 * h, 4 * w), float((round(img.mean()) + seed) % 256) / 255)
                rec = {"ok": True, "seconds": 0.0, "forwards": 1, "new_tokens": 1, "seed": seed}
                out.append(SimpleNamespace(image=image, ok=True, record=lambda rec=rec: rec))
            return out

    monkeypatch.setattr(pe, "load_components", lambda cfg, device: (None, None, None))
    monkeypatch.setattr(pe, "build_restorer", lambda cfg, model, vq, tok, log=None: Restorer())


# killed before the first JSON / before the second / before the second image
@pytest.mark.parametrize("writer,kill_at", [("atomic_write_bytes", 0), ("atomic_write_bytes", 1), ("write_image", 1)])
def test_sampling_killed_while_redoing_then_resumed_equals_a_clean_run(tmp_path, monkeypatch, writer, kill_at):
    import common.checkpoint as ck
    import common.data.io as cio
    import pure.evaluate as pe
    from common.config import compose_config, to_dataclass

    lr_dir = tmp_path / "LR"
    for name, v in {"a": 20, "b": 120, "c": 220}.items():
        write_image(lr_dir / f"{name}.png", np.full((6, 5, 3), v, np.uint8))
    _stub(monkeypatch)
    pe.register_configs()

    def run(out, seed, *extra):
        args = ["model=tiny", "ckpt_dir=null", "vq_ckpt=null", "tokenizer=null", "metrics=[]", "device=cpu"]
        args += [f"lr_dir={lr_dir}", f"out_dir={out}", f"seed={seed}", *extra]
        return pe.run_restore(to_dataclass(pe.PureSampleConfig, compose_config("pure", "sample", args)))

    run(tmp_path / "clean" / "sr", 200)
    out = tmp_path / "run" / "sr"
    run(out, 100)  # an older, complete run
    with monkeypatch.context() as m:
        is_output = lambda p: Path(p).parent == out and Path(p).stem in "abc"  # noqa: E731  (not run settings)
        _kill_after(m, ck if writer == "atomic_write_bytes" else cio, writer, kill_at, is_output)
        with pytest.raises(Killed):
            run(out, 200, "overwrite=true")
    run(out, 200, "skip_existing=true")
    assert _files(out) == _files(tmp_path / "clean" / "sr")
    assert [json.loads((out / f"{n}.json").read_text())["seed"] for n in "abc"] == [200, 201, 202]


def test_hf_export_killed_over_an_older_one_does_not_load(tmp_path, monkeypatch):
    import pure.official as po
    from pure.model import ChameleonForCausalLM, chameleon_config

    cfg = chameleon_config("tiny", vocab_size=9216)
    torch.manual_seed(0)
    old, new = ChameleonForCausalLM(cfg), ChameleonForCausalLM(cfg)
    out = tmp_path / "hf"
    po.save_hf_shards(old, out, max_shard_size="1MB", config=cfg, dtype=None)
    n_shards = len(list(out.glob("model-*.safetensors")))
    assert n_shards >= 3
    with monkeypatch.context() as m:
        _kill_after(m, po, "save_safetensors_atomic", 1)  # first shard replaced, then killed
        with pytest.raises(Killed):
            po.save_hf_shards(new, out, max_shard_size="1MB", config=cfg, dtype=None)
    with pytest.raises(FileNotFoundError, match="model.safetensors.index.json"):
        po.load_hf_shards(ChameleonForCausalLM(cfg), out)  # not a mix of old and new shards
    po.save_hf_shards(new, out, max_shard_size="1MB", config=cfg, dtype=None)
    loaded = ChameleonForCausalLM(cfg)
    po.load_hf_shards(loaded, out)
    for name, v in new.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], v), name
