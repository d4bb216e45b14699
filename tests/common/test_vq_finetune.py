"""Tokenizer fine-tuning: training forwards agree with the inference token paths, one batch
overfits, exports load strictly through the official loaders, and resuming equals not stopping."""

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data import HRTrainDataset, ImageSource, write_image
from common.vq_finetune import FinetuneSettings, finetune, hr_stream
from pure.model.vq import VQModel, vq_config
from pure.official import load_llamagen_vq
from pure.vq_finetune import build_vq, export_vq
from pure.vq_finetune import step_fn as pure_step
from varsr.model import VQVAE, model_config
from varsr.official import load_official_vqvae
from varsr.vqvae_finetune import export_vqvae
from varsr.vqvae_finetune import step_fn as varsr_step

# Tiny VARSR VQVAE with 3 scales: the same weights as "tiny", on 48 px images (4x cheaper than 96).
VARSR_SMALL = dict(patch_nums=(1, 2, 3))


def _photo(side: int, n: int = 1) -> torch.Tensor:
    """n smooth colourful test images in [0, 1] (gradients + a disc), deterministic."""
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    out = []
    for i in range(n):
        disc = (((x - 0.3 - 0.2 * i) ** 2 + (y - 0.6) ** 2) < 0.06).float()
        out.append(torch.stack([x, y * (1 - disc) + disc, 0.8 * (1 - x) * y + 0.2 * disc]))
    return torch.stack(out).clamp(0, 1)


def _settings(tmp_path, steps, **kw) -> FinetuneSettings:
    return FinetuneSettings(run_dir=str(tmp_path), steps=steps, lr=1e-3, log_every=1, wandb_mode="disabled", **kw)


def _l1_curve(run_dir) -> list[float]:
    rows = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    return [r["l1"] for r in rows if "l1" in r]


@torch.no_grad()
def test_varsr_forward_train_matches_token_path():
    torch.manual_seed(0)
    vqvae = VQVAE(model_config("tiny", **VARSR_SMALL)).eval()
    hr = _photo(48, 2) * 2 - 1
    recon, aux = vqvae.forward_train(hr)
    # Independent path: indices from the inference encoder, f_hat rebuilt by accumulate().
    tt = vqvae.encode_for_training(hr)
    q, f_hat = vqvae.quantize, torch.zeros(2, 8, 3, 3)
    for si, idx in enumerate(torch.split(tt.gt_idx, [p * p for p in q.patch_nums], dim=1)):
        f_hat, _ = q.accumulate(si, idx, f_hat)
    torch.testing.assert_close(recon.clamp(-1, 1), vqvae.decode_fhat(f_hat), atol=1e-4, rtol=1e-4)
    # Codebook term at the last scale is ||f_hat - f||^2 = ||e_last - r_last||^2 (closed form of 2.4).
    assert aux["commit"] > 0 and aux["codebook"] > 0
    torch.testing.assert_close(aux["commit"] / 0.25, aux["codebook"])  # same value, different gradients


def test_varsr_gradients_route_like_vq():
    torch.manual_seed(0)
    vqvae = VQVAE(model_config("tiny", **VARSR_SMALL))
    recon, aux = vqvae.forward_train(_photo(48) * 2 - 1)
    F.l1_loss(recon, _photo(48) * 2 - 1).backward()  # reconstruction only
    assert vqvae.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert vqvae.quantize.embedding.weight.grad is None  # the codebook learns only from its own loss
    aux["codebook"].backward()
    assert vqvae.quantize.embedding.weight.grad.abs().sum() > 0
    assert vqvae.quantize.quant_resi.qresi_ls[0].weight.grad.abs().sum() > 0  # phi trained too


@torch.no_grad()
def test_pure_forward_train_matches_codes_path():
    torch.manual_seed(0)
    vq = VQModel(vq_config("tiny")).eval()
    img = _photo(16, 2) * 2 - 1
    recon, aux = vq.forward_train(img)
    torch.testing.assert_close(recon, vq(img), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux["commit"] / 0.25, aux["codebook"])


def test_varsr_vqvae_overfits_and_exports(tmp_path):
    torch.manual_seed(0)
    vqvae = VQVAE(model_config("tiny", **VARSR_SMALL))
    hr = _photo(48, 1)
    out = finetune(vqvae, varsr_step(), lambda start: itertools.repeat(hr), _settings(tmp_path / "run", 20))
    l1 = _l1_curve(tmp_path / "run")
    assert out["step"] == 20 and len(l1) == 20
    assert l1[-1] <= 0.5 * l1[0], l1
    path = export_vqvae(vqvae, tmp_path / "vqvae.pth")
    fresh = load_official_vqvae(path, VQVAE(model_config("tiny", **VARSR_SMALL)))
    for k, v in vqvae.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"trainer"} and set(blob["trainer"]) == {"vae_local"}
    # The 6-scale tiny model takes the same file (usage buffer shape is tolerated, as officially).
    load_official_vqvae(export_vqvae(vqvae, tmp_path / "vqvae.safetensors"), VQVAE(model_config("tiny")))


def test_pure_vq_overfits_and_exports(tmp_path):
    torch.manual_seed(0)
    vq = build_vq("tiny")
    hr = _photo(32, 1)
    out = finetune(vq, pure_step(), lambda start: itertools.repeat(hr), _settings(tmp_path / "run", 20))
    l1 = _l1_curve(tmp_path / "run")
    assert out["step"] == 20 and l1[-1] <= 0.5 * l1[0], l1
    path = export_vq(vq, tmp_path / "vq.pt")
    fresh = load_llamagen_vq(VQModel(vq_config("tiny")), path, strict=True)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


@pytest.fixture
def small_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for i in range(3):
        img = (_photo(40)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        write_image(
            root / f"im{i}.png", np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        )
    return root


def test_resume_equals_uninterrupted(tmp_path, small_folder):
    ds = HRTrainDataset([ImageSource(str(small_folder))], crop_size=16, seed=3)

    def run(run_dir, steps, ckpt_every=0):
        torch.manual_seed(0)
        vq = build_vq("tiny")
        out = finetune(vq, pure_step(), hr_stream(ds, batch_size=2), _settings(run_dir, steps, ckpt_every=ckpt_every))
        return vq, out

    full, _ = run(tmp_path / "a", 5)
    _, first = run(tmp_path / "b", 3)
    assert first["resumed_from"] is None
    resumed, second = run(tmp_path / "b", 5)  # fresh init, then the step-3 checkpoint is loaded
    assert second["resumed_from"].endswith("step_00000003") and second["step"] == 5
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)
    # batches crossed an epoch boundary (3 images, 2 per step): the stream must have been positioned
    assert len(_l1_curve(tmp_path / "b")) == 5


def test_launcher_pure_roundtrip_and_crop_check(tmp_path, small_folder, capsys):
    spec = importlib.util.spec_from_file_location("finetune_vq", Path(__file__).parents[2] / "launch/finetune_vq.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["finetune_vq"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    main = mod.main
    common = [
        f"data.sources=[{{root: '{small_folder}', kind: folder}}]",
        "steps=2",
        "batch_size=2",
        "wandb_mode=disabled",
        "eval_count=2",
    ]
    out = tmp_path / "vq.pt"
    stats = main(["app=pure", "size=tiny", "crop_size=16", "eval_size=32", f"out={out}", *common])
    assert stats["step"] == 2 and np.isfinite(stats["eval_psnr"])
    load_llamagen_vq(VQModel(vq_config("tiny")), out, strict=True)
    assert (tmp_path / "vq_run" / "recon.png").is_file()
    with pytest.raises(SystemExit) as e:  # the launchers' error boundary: one line, exit 2
        main(["app=varsr", "size=tiny", "crop_size=64", f"out={tmp_path / 'v.pth'}", *common])
    assert e.value.code == 2 and "needs 96 px" in capsys.readouterr().err
