"""Schema of ``configs/common/web_demo.yaml``: where the demo listens and which checkpoints it offers.

Each checkpoint entry maps keys of that app's *sampling* config (``configs/varsr/sample.yaml``,
``configs/pure/sample.yaml`` or, for the Real-ESRGAN baseline, ``configs/common/sample_baseline.yaml``) to
values, so the demo loads weights exactly as ``launch/sample_*.py`` would and every key documented there is
available here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import DEVICE, Rule, at_least, between, checks

# The exports `make demo` writes (random tiny tokenizers: the pictures are noise, the plumbing is real).
TINY_VARSR = "runs/demo/varsr/export/VARSR.pth"
TINY_PURE = "runs/demo/pure/export"


@checks(
    port=between(0, 65535),
    max_upload_mb=Rule(lambda v: v > 0, "> 0"),
    max_input_pixels=at_least(1),
    queue_size=at_least(1),
    device=DEVICE,
)
@dataclass
class WebDemoConfig:
    """Web demo server. Add real weights with e.g.
    ``+varsr.official.model=d24 +varsr.official.ckpt=/w/VARSR.pth +varsr.official.vae_ckpt=/w/VQVAE.pth``."""

    host: str = "127.0.0.1"  # bind address; localhost only unless you mean to expose it (0.0.0.0)
    port: int = 7860  # TCP port (0 = let the OS pick one and print it)
    max_upload_mb: float = 10.0  # uploads larger than this are refused by the server before decoding
    max_input_pixels: int = 2048 * 2048  # decoded LR images with more pixels are refused with a message
    queue_size: int = 8  # pending requests beyond this are refused ("queue full"); one runs at a time
    device: str = "auto"  # auto | cpu | cuda: where the (one) loaded model lives
    # checkpoint name -> {key of configs/varsr/sample.yaml: value}; the first one found on disk is preselected
    varsr: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"tiny-demo": {"model": "tiny", "ckpt": TINY_VARSR, "vae_ckpt": TINY_VARSR}}
    )
    # checkpoint name -> {key of configs/pure/sample.yaml: value}
    pure: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "tiny-demo": {
                "model": "tiny",
                "ckpt_dir": TINY_PURE,
                "vq_ckpt": None,
                "vq_size": "tiny",
                "resolution": 64,
                "image_only": True,
                "max_new_tokens": 120,
            }
        }
    )
    # checkpoint name -> {key of configs/common/sample_baseline.yaml: value}; x4plus = the weights `make setup` cached
    realesrgan: dict[str, dict[str, Any]] = field(default_factory=lambda: {"x4plus": {"weights": None}})


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="web_demo_schema", node=WebDemoConfig)
