"""Model configuration for VARSR (transformer + multi-scale VQVAE + diffusion refiner).

`VARSRModelConfig` documents every architectural knob; the defaults are the released VARSR-d24
values (spec varsr.md sections 1-4).  `model_config(size)` is the size registry used by the
Hydra yaml files in `configs/varsr/model/` and by tests.  VAR's convention applies to the
transformer: width = 64 * depth, heads = depth (head_dim 64).

`lr_prefix=False` selects the class-to-image pretraining variant (official `ImgVAR_RoPE`, spec
section 7): no LR encoder, the prefix is the SOS token only (first_l = 1, `pos_start` (1, 1, C)),
RoPE/levels/mask cover the scales only, and the last `class_emb` row is the null class used by
label dropout and CFG.  Presets "c2i_tiny" and "c2i_d24" (the released VARSR_C2I.pth shape).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

# 512-px scale schedule of the SR checkpoint: 10 scales, L = 2240 tokens (spec 2.2).
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
# 512-px schedule of the C2I checkpoint (`--pn 512`, test_C2I.py): 12 scales, L = 3331 tokens.
PATCH_NUMS_C2I_512 = (1, 2, 3, 4, 6, 9, 12, 16, 20, 24, 28, 32)


@dataclass
class VARSRModelConfig:
    # --- transformer ---
    depth: int = 24  # number of AdaLN blocks
    width: int | None = None  # embed dim C; None -> 64 * depth (VAR convention)
    num_heads: int | None = None  # None -> depth (head_dim 64); head_dim must be divisible by 4 (2-D RoPE)
    mlp_ratio: float = 4.0  # FFN hidden = mlp_ratio * C (GELU tanh)
    norm_eps: float = 1e-6  # LayerNorm eps in blocks / head / decoder_norm
    drop_path_rate: float = 0.1  # stochastic depth, linearly spaced 0 -> rate over blocks
    # SR: 0 = high quality, 1 = low quality ("negative" CFG branch).  C2I: real classes + 1; the last
    # row (num_classes - 1) is the null class (label dropout / CFG), e.g. 3831 = 3830 clusters + null.
    num_classes: int = 2
    lr_prefix: bool = True  # True: SR (LR prefix tokens + SOS); False: C2I (SOS only)
    # Training-side class-label dropout to the null class (read by varsr.losses, not by the module).
    # None -> 0.1 for C2I (VAR's cond_drop_rate), 0 for SR (no null class, spec 6).
    cond_drop_prob: float | None = None
    patch_nums: tuple[int, ...] = PATCH_NUMS_512  # token-map sides per scale; last side = LR prefix grid
    rope_grid: int | None = None  # RoPE coordinate grid; None -> patch_nums[-1] (official hard-codes 32)
    rope_theta: float = 10000.0  # RoPE base
    # LR prefix encoder (ControlNet conditioning embedding); channels hard-coded in the official code.
    con_channels: tuple[int, ...] = (32, 128, 256, 512, 1536)
    # --- VQVAE / quantizer ---
    vocab_size: int = 4096  # codebook entries V
    cvae: int = 32  # codebook / latent channels
    vae_ch: int = 160  # VQVAE base channels (multiple of 32: GroupNorm(32))
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 4 down-samplings -> factor 16
    vae_num_res_blocks: int = 2  # encoder res-blocks per level (decoder uses +1)
    share_quant_resi: int = 4  # number of shared phi convs
    quant_resi: float = 0.5  # phi(h) = (1 - q) h + q conv(h)
    # --- diffusion refiner (MAR DiffLoss) ---
    diff_width: int = 1024  # MLP width (official hard-coded 1024)
    diff_depth: int = 6  # residual blocks (official hard-coded 6)
    diff_batch_mul: int = 4  # rows repeated with independent t/noise in training
    diff_steps: int = 1000  # training diffusion steps (cosine schedule)
    diff_sample_steps: str = "10"  # respacing used at inference
    vae_scale: float = 0.6  # residual target is divided by this
    # --- initialisation (VAR init_weights; only used when training from scratch) ---
    init_std: float = -1.0  # <0 -> sqrt(1 / (3 C))
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02

    def __post_init__(self) -> None:
        # Hydra/OmegaConf hand tuples back as lists; normalise so configs compare and hash.
        for name in ("patch_nums", "con_channels", "vae_ch_mult"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.embed_dim % self.heads:
            raise ValueError(f"width {self.embed_dim} not divisible by num_heads {self.heads}")
        if (self.embed_dim // self.heads) % 4:
            raise ValueError("head_dim must be divisible by 4 for the 2-D RoPE")
        if len(self.con_channels) != 5:
            raise ValueError("con_channels needs 5 entries (4 stride-2 stages -> factor 16)")
        if self.patch_nums[0] != 1:
            raise ValueError(f"patch_nums must start with 1 (the SOS scale), got {self.patch_nums}")
        if not self.lr_prefix and self.num_classes < 2:
            raise ValueError("C2I (lr_prefix=false) needs num_classes >= 2: real classes + the null class")
        if self.lr_prefix and self.cond_drop_prob:
            # The SR model's last class is the *negative* class, not a null class: dropping labels to
            # it would teach "positive images look like negatives".
            raise ValueError("cond_drop_prob > 0 needs a null class; only the C2I model (lr_prefix=false) has one")
        if self.cond_drop_prob is not None and not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")

    @property
    def embed_dim(self) -> int:
        return self.width if self.width is not None else 64 * self.depth

    @property
    def heads(self) -> int:
        return self.num_heads if self.num_heads is not None else self.depth

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def prefix_len(self) -> int:
        """SR: LR tokens (last-scale grid) + SOS; C2I: the SOS only."""
        return self.patch_nums[-1] ** 2 + 1 if self.lr_prefix else 1

    @property
    def null_class(self) -> int | None:
        """C2I null-class index (label dropout / CFG branch); None for SR (no null class)."""
        return None if self.lr_prefix else self.num_classes - 1

    @property
    def label_drop_prob(self) -> float:
        """Resolved cond_drop_prob (see the field comment)."""
        if self.cond_drop_prob is not None:
            return float(self.cond_drop_prob)
        return 0.0 if self.lr_prefix else 0.1

    @property
    def seq_len(self) -> int:
        """Tokens predicted (sum of pn^2), e.g. 2240."""
        return sum(p * p for p in self.patch_nums)

    @property
    def image_size(self) -> int:
        """HR (and resized LR) side the model works at: last grid * 16."""
        return self.patch_nums[-1] * 16


_SIZES: dict[str, dict[str, Any]] = {
    "d16": dict(depth=16),
    "d20": dict(depth=20),
    "d24": dict(depth=24),
    "d30": dict(depth=30),
    # spec 14.1: 6 scales so all four phi convs are used; tiny prefix encoder and refiner.
    "tiny": dict(
        depth=2,
        width=128,
        num_heads=2,
        patch_nums=(1, 2, 3, 4, 5, 6),
        vocab_size=64,
        cvae=8,
        vae_ch=32,
        con_channels=(16, 32, 32, 64, 64),
        diff_width=64,
        diff_depth=2,
        drop_path_rate=0.0,
    ),
}
# C2I pretraining variants: same blocks/refiner/VQVAE, SOS-only prefix, null class last.
# c2i_d24 = the released VARSR_C2I.pth (3830 clusters + null, 12-scale schedule).  To pretrain for
# SR transfer with lvl_embed kept as well, override patch_nums with PATCH_NUMS_512.
_C2I = dict(lr_prefix=False, cond_drop_prob=0.1)
_SIZES["c2i_d24"] = dict(depth=24, num_classes=3831, patch_nums=PATCH_NUMS_C2I_512, **_C2I)
_SIZES["c2i_tiny"] = dict(_SIZES["tiny"], num_classes=5, **_C2I)  # 4 classes + null


def model_config(size: str, **overrides: Any) -> VARSRModelConfig:
    """Config for a named size ("tiny", "d16", "d20", "d24", "d30", "c2i_tiny", "c2i_d24").

    Overrides turn any size into a C2I model, e.g.
    `model_config("d24", lr_prefix=False, num_classes=3831, patch_nums=PATCH_NUMS_512)`.
    """
    if size not in _SIZES:
        raise ValueError(f"unknown VARSR size {size!r}; choose from {sorted(_SIZES)}")
    return VARSRModelConfig(**{**_SIZES[size], **overrides})


def config_from_dict(d: Any) -> VARSRModelConfig:
    """Build from a dict / DictConfig, ignoring keys that are not config fields (e.g. `name`)."""
    if not isinstance(d, dict):
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(d, resolve=True)
    names = {f.name for f in fields(VARSRModelConfig)}
    base = model_config(d["size"]) if "size" in d else VARSRModelConfig()
    return replace(base, **{k: v for k, v in d.items() if k in names})
