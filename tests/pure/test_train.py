"""PURE training: loss vs an independent reference, schedule, overfitting, kill+resume, vocab
extension, HF export, config composition. Tiny model with a shrunken vocabulary (9,216 ids still
hold every special id) keeps each test at a few seconds on CPU."""

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pure.build import extend_vocabulary
from pure.config import PureTrainConfig
from pure.data import merge_indices, write_shard
from pure.losses import PureLoss
from pure.optim import lr_at
from pure.train import main

VOCAB = 9216


pytestmark = pytest.mark.usefixtures("one_thread")


def make_records(n, seed=0, prompt=12, lo=24, hi=40):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(lo, hi))
        tok = rng.integers(4, 8000, L).tolist()
        tok[0] = 0
        tok[prompt : prompt + 3] = [8197, 8806, 8806]  # an image block start inside the answer
        tok[-2:] = [8196, 8710]
        out.append({"token": tok, "label": [-100] * prompt + tok[prompt:], "id": f"r{i}"})
    return out


def make_cfg(tmp_path, n_records=8, **over):
    data = tmp_path / "data"
    if not (data / "record.json").exists():
        write_shard(data / "shard_0", make_records(n_records))
        merge_indices(data)
    cfg = OmegaConf.structured(PureTrainConfig)
    cfg.model = {"size": "tiny", "vocab_size": VOCAB}
    cfg.data.meta = str(data / "record.json")
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.pad_to_multiple = 2, 0, 8
    cfg.parallel.backend, cfg.parallel.param_dtype = "none", "fp32"
    cfg.parallel.activation_checkpointing = False
    cfg.run.run_dir, cfg.run.wandb_mode, cfg.run.device = str(tmp_path / "run"), "disabled", "cpu"
    cfg.optim.lr, cfg.schedule.warmup_epochs = 3e-3, 0.0
    cfg.logging.every_steps, cfg.checkpoint.every_steps, cfg.dropout = 100, 0, 0.0
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_loss_matches_reference_cross_entropy():
    from pure.model import ChameleonForCausalLM, chameleon_config

    torch.manual_seed(0)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    recs = make_records(2, seed=3)
    L = min(len(r["token"]) for r in recs)
    ids = torch.tensor([r["token"][:L] for r in recs])
    lab = torch.tensor([r["label"][:L] for r in recs])
    w = 1e-3
    loss, stats = PureLoss(lm, z_loss_weight=w, chunk=7)(ids, lab)
    logits = lm(ids)[:, :-1].reshape(-1, VOCAB)
    tgt = lab[:, 1:].reshape(-1)
    ce = F.cross_entropy(logits, tgt, ignore_index=-100)
    z = torch.logsumexp(lm(ids), -1)[lab != -100].pow(2).mean()  # unshifted: own label supervised
    assert torch.allclose(loss, ce + w * z, atol=1e-5)
    assert abs(stats["ce"] - ce) < 1e-5 and stats["n_image"] + stats["n_text"] == int((tgt != -100).sum())
    assert math.isclose(float(stats["ce"]), math.log(VOCAB), rel_tol=0.05)  # ≈ ln V at init


@pytest.mark.parametrize("where", ["last", "first"])
def test_z_loss_single_supervised_label(where):
    """One supervised label. z-loss = lse(logits at that label's own position)^2 (official: unshifted
    mask, the last position included); CE = the one next-token term predicting it, or none."""
    from pure.model import ChameleonForCausalLM, chameleon_config

    torch.manual_seed(1)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    with torch.no_grad():
        lm.lm_head.weight.mul_(50)  # peaked logits: logsumexp differs clearly from position to position
    T, w = 10, 0.25
    ids = torch.randint(4, 8000, (1, T))
    lab = torch.full((1, T), -100)
    pos = T - 1 if where == "last" else 0
    lab[0, pos] = ids[0, pos]
    loss, stats = PureLoss(lm, z_loss_weight=w)(ids, lab)
    with torch.no_grad():
        lg = lm(ids)[0].double()
    lse = [float(torch.logsumexp(lg[t], -1)) for t in range(T)]
    z = lse[pos] ** 2
    assert math.isclose(float(stats["z_loss"]), z, rel_tol=1e-5)
    assert not math.isclose(z, lse[pos - 1] ** 2, rel_tol=1e-3)  # the shifted mask would give this
    if where == "last":  # position T-2 predicts the label at T-1
        ce = lse[T - 2] - float(lg[T - 2, ids[0, T - 1]])
        assert int(stats["n_text"]) + int(stats["n_image"]) == 1
    else:  # nothing predicts the first token
        ce = 0.0
        assert int(stats["n_text"]) + int(stats["n_image"]) == 0
    assert math.isclose(float(stats["ce"]), ce, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(float(loss.detach()), ce + w * z, rel_tol=1e-5)


def test_lr_schedule_closed_form():
    assert lr_at(0, 100, 10, 4e-4) == 0.0
    assert lr_at(5, 100, 10, 4e-4) == pytest.approx(2e-4)
    assert lr_at(10, 100, 10, 4e-4) == pytest.approx(4e-4)
    assert lr_at(55, 100, 10, 4e-4) == pytest.approx(2e-4)
    assert lr_at(100, 100, 10, 4e-4, min_lr=1e-5) == pytest.approx(1e-5)


def test_overfit_one_batch(tmp_path):
    cfg = make_cfg(tmp_path, n_records=2, **{"schedule.epochs": 40, "optim.lr": 1e-2})
    losses = main(cfg)["losses"]
    assert len(losses) == 40 and losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_sigterm_checkpoint_and_resume_reproduce(tmp_path):
    # 8 records -> 4 steps/epoch -> 12 steps; dropout + activation checkpointing: RNG streams must resume too
    over = {"schedule.epochs": 3, "dropout": 0.1, "parallel.activation_checkpointing": True}
    ref = main(make_cfg(tmp_path / "a", **over))["losses"]

    def kill_at_5(step, loss):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    b = make_cfg(tmp_path / "b", **over)
    first = main(b, on_step=kill_at_5)
    assert first["step"] == 5 and (tmp_path / "b/run/checkpoints/step_00000005/COMPLETE").is_file()
    second = main(b)
    assert second["step"] == 12
    np.testing.assert_allclose(first["losses"] + second["losses"], ref, rtol=1e-5, atol=1e-6)


def test_extend_vocabulary_keeps_old_predictions():
    from pure.model import ChameleonForCausalLM, chameleon_config

    torch.manual_seed(0)
    lm = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    ids = torch.randint(0, VOCAB, (1, 16))
    before = lm(ids)
    old_img_mean = lm.model.embed_tokens.weight[4:8196].mean(0).clone()
    extend_vocabulary(lm, VOCAB + 512)
    after = lm(ids)
    assert after.shape[-1] == VOCAB + 512 and lm.config.vocab_size == VOCAB + 512
    assert torch.equal(after[..., :VOCAB], before) and after[..., VOCAB:].eq(0).all()
    new = lm.model.embed_tokens.weight[VOCAB:]
    assert torch.allclose(new.mean(0), old_img_mean, atol=0.01)


def test_hf_export_roundtrip(tmp_path):
    from pure.model import ChameleonForCausalLM, chameleon_config
    from pure.official import load_hf_shards

    cfg = make_cfg(
        tmp_path,
        n_records=2,
        **{"schedule.epochs": 1, "export.hf_dir": str(tmp_path / "hf"), "export.max_shard_size": "1MB"},
    )
    main(cfg)
    from common.train_state import load_model_only, step_dir

    fresh = ChameleonForCausalLM(chameleon_config("tiny", vocab_size=VOCAB))
    sd = {"lm." + k: v.clone() for k, v in fresh.state_dict().items()}
    load_model_only(step_dir(tmp_path / "run", 1), sd)  # fills sd in place, model keys only
    load_hf_shards(fresh, tmp_path / "hf")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd["lm." + k].to(torch.bfloat16).float()), k
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1


@pytest.mark.parametrize("exp", ["quick", "lsdir_ffhq", "zero2", "zero3"])
def test_every_exp_config_composes(exp):
    from common.config import compose_config, validate

    cfg = validate(PureTrainConfig, compose_config("pure", "train", [f"+exp={exp}"]))
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.grad_clip == 4.0
    if exp == "lsdir_ffhq":  # official hyper-parameters
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.epochs, cfg.dropout) == (4e-4, 0.1, 2.0, 0.05)
        assert cfg.data.batch_size == 4 and cfg.schedule.warmup_epochs == 0.5 and cfg.model.size == "7b"


def test_online_mode_trains_from_images(tmp_path):
    """data.online: HR crops -> degrade -> VQ encode -> sequences per batch, no shards on disk."""
    from PIL import Image

    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = make_cfg(
        tmp_path,
        n_records=2,
        **{
            "schedule.epochs": 2,
            "data.online": True,
            "data.pad_to_multiple": 8,
            "pretokenize.images": [str(d)],
            "pretokenize.target_size": 64,
            "pretokenize.out_dir": str(tmp_path / "tok"),
            "pretokenize.device": "cpu",
        },
    )
    cfg.model = {"size": "tiny"}  # online records use the real 73,728-id vocabulary
    res = main(cfg)
    assert res["step"] == 4 and all(np.isfinite(res["losses"]))
    assert abs(res["losses"][0] - math.log(73728)) < 0.5
    assert not list(tmp_path.glob("tok/shard_*"))


GOLDEN_LOSSES = Path(__file__).parent / "golden_train_losses.json"


def test_loss_golden(tmp_path):
    """8 steps of the tiny config with a fixed seed (dropout + activation checkpointing on) must
    reproduce the stored curve; an intended change to the math regenerates the golden in the same
    commit (`ARSR_UPDATE_GOLDEN=1`)."""
    cfg = make_cfg(tmp_path, dropout=0.05, **{"schedule.epochs": 2, "parallel.activation_checkpointing": True})
    losses = main(cfg)["losses"]
    if os.environ.get("ARSR_UPDATE_GOLDEN"):
        GOLDEN_LOSSES.write_text(json.dumps({"losses": losses}, indent=1))
    np.testing.assert_allclose(losses, json.loads(GOLDEN_LOSSES.read_text())["losses"], rtol=1e-4)


def test_stats_are_read_once_per_log_window(tmp_path, monkeypatch):
    """Per-step loss/stats stay on the device: one all-reduce (and one host read) per logging window
    of `logging.every_steps` steps, while the returned curve still has every step."""
    import pure.train as pt

    calls, real = [], pt.all_reduce_mean
    monkeypatch.setattr(pt, "all_reduce_mean", lambda t, *a, **k: calls.append(tuple(t.shape)) or real(t, *a, **k))
    res = main(make_cfg(tmp_path, **{"schedule.epochs": 2, "logging.every_steps": 3}))  # 8 steps
    assert len(res["losses"]) == 8 and all(np.isfinite(res["losses"]))
    assert [c[0] for c in calls] == [3, 3, 2]  # steps 1-3, 4-6, 7-8 (the last window at the end)


def test_planted_rng_pickle_as_newest_checkpoint_never_runs(tmp_path, caplog, capfd):
    """Single process: a newest checkpoint whose RNG file runs code when unpickled is skipped with a
    warning naming the file; the run resumes from the previous good step and the payload never runs."""
    import shutil

    from common.train_state import step_dir
    from tests.common.test_train_state import plant_torch

    cfg = make_cfg(tmp_path, n_records=4, **{"schedule.epochs": 1, "checkpoint.every_steps": 1})
    main(cfg)  # 2 steps/epoch: step_1 and step_2 on disk
    bad = step_dir(cfg.run.run_dir, 7)
    shutil.copytree(step_dir(cfg.run.run_dir, 2), bad)
    plant_torch(bad / "rng" / "rank_00000.pt", tmp_path / "PWNED")
    with caplog.at_level("WARNING"):
        out = main(make_cfg(tmp_path, n_records=4, **{"schedule.epochs": 2}))
    assert not (tmp_path / "PWNED").exists()
    assert out["step"] == 4 and len(out["losses"]) == 2  # resumed at step 2, not 0 and not 7
    printed = caplog.text + "".join(capfd.readouterr())  # the arsr logger may print without propagating
    assert "skipping checkpoint step_00000007" in printed and "rank_00000.pt" in printed
