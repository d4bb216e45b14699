"""Configuration of the Chameleon decoder used by PURE (spec pure.md §1.1).

`ChameleonConfig` documents every field; defaults are the released PURE 7B values
(Chameleon-7B as fine-tuned by Lumina-mGPT-7B-512, vocabulary extended to 73,728).
`chameleon_config("tiny" | "7b")` is the size registry; `from_hf_config_json` reads the
`config.json` shipped with an HF checkpoint (e.g. `nonwhy/PURE`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ChameleonConfig:
    """Shape and behaviour of the decoder. Field names follow HF's `ChameleonConfig`."""

    vocab_size: int = 73728  # 65,536 Chameleon ids + 8,192 added image slots (65536..73727)
    hidden_size: int = 4096  # model width C
    intermediate_size: int = 11008  # SwiGLU hidden width
    num_hidden_layers: int = 32  # decoder layers
    num_attention_heads: int = 32  # query heads; head_dim = hidden_size / heads = 128
    num_key_value_heads: int = 32  # KV heads (32 = plain MHA for the 7B; fewer gives GQA)
    rms_norm_eps: float = 1e-5  # eps of RMSNorm and of the q/k LayerNorm
    rope_theta: float = 10000.0  # RoPE base; no scaling, positions 0..L-1
    max_position_embeddings: int = 11776  # PURE's max_seq_len; only caps generation length
    dropout: float = 0.05  # residual dropout on attention and MLP outputs (active in train mode only)
    attention_dropout: float = 0.0  # dropout on attention probabilities (0 in every official run)
    z_loss_weight: float = 0.0  # weight of mean(logsumexp(logits)^2); 0 for PURE
    initializer_range: float = 0.02  # std of the normal init of Linear/Embedding weights
    model_parallel_size: int = 1  # rows of the shared q/k-norm gamma/beta, repeat-interleaved over heads
    tie_word_embeddings: bool = False  # lm_head is a separate matrix in the released weights
    mask_image_logits: bool = False  # must stay False for PURE (trained with --unmask_image_logits)
    bos_token_id: int = 0  # the tokenizer's <s>; HF's class default of 1 is NOT what is prepended
    eos_token_id: int = 8710  # <reserved08706>: ends every turn, generation stops on it
    pad_token_id: int | None = 1  # <pad>; right padding under a causal mask makes its value irrelevant
    hidden_act: str = "silu"  # SwiGLU activation (only silu is implemented)
    vocabulary_map: dict | None = field(default=None, repr=False, compare=False)  # name -> id (HF config.json)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_attention_heads % self.model_parallel_size:
            raise ValueError("num_attention_heads must be a multiple of model_parallel_size")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (Chameleon uses silu)")

    def num_params(self) -> int:
        """Closed-form parameter count (spec §1.1), used to check the module."""
        c, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        per_layer = 2 * c * c + 2 * c * kv + 3 * c * i + 2 * c + 4 * self.model_parallel_size * self.head_dim
        heads = (1 if self.tie_word_embeddings else 2) * self.vocab_size * c
        return self.num_hidden_layers * per_layer + heads + c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SIZES = {
    "7b": {},
    # Tiny test model keeping the real vocabulary (processors rely on the fixed special ids);
    # the shapes match reference/pure_chameleon_7b_tiny.json. Dropout 0 keeps tests deterministic.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        dropout=0.0,
    ),
}


def chameleon_config(size: str, **overrides) -> ChameleonConfig:
    """Registry of named sizes ("tiny", "7b"); keyword overrides replace single fields."""
    key = size.lower()
    if key not in _SIZES:
        raise ValueError(f"unknown Chameleon size {size!r}; choose one of {sorted(_SIZES)}")
    return ChameleonConfig(**{**_SIZES[key], **overrides})


def config_from_dict(values) -> ChameleonConfig:
    """Build from a yaml/Hydra mapping like configs/pure/model/*.yaml: `size` picks the base
    entry of the registry, every other key overrides a field."""
    values = dict(values)
    return chameleon_config(str(values.pop("size", "7b")), **values)


def from_hf_config_json(path: str | Path) -> ChameleonConfig:
    """Read an HF Chameleon `config.json` (a file or a checkpoint directory).

    Unknown keys (architectures, vq_config, torch_dtype, ...) are ignored; `bos/eos` keep our
    tokenizer-derived defaults because the class defaults stored by HF (1/2) are not the ids
    PURE uses (spec §2)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read Chameleon config {path}: {exc}") from None
    names = {f.name for f in dataclasses.fields(ChameleonConfig)} - {"bos_token_id", "eos_token_id", "pad_token_id"}
    kwargs = {k: v for k, v in raw.items() if k in names}
    if raw.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling={raw['rope_scaling']} is not supported (PURE uses none)")
    return ChameleonConfig(**kwargs)


def hf_config_dict(cfg: ChameleonConfig, vocabulary_map: dict | None = None, torch_dtype: str = "bfloat16") -> dict:
    """The `config.json` content HF/official Chameleon code expects for these weights.

    `vq_config` describes Chameleon's own VQGAN (the `model.vqmodel` the official class builds
    and PURE never uses); the values are Chameleon's released ones so the official class can be
    constructed."""
    d = cfg.to_dict()
    d["vocabulary_map"] = vocabulary_map if vocabulary_map is not None else cfg.vocabulary_map
    if d["vocabulary_map"] is None:
        d.pop("vocabulary_map")
    d.update(
        architectures=["ChameleonForConditionalGeneration"],
        model_type="chameleon",
        rope_scaling=None,
        attention_bias=False,
        mlp_bias=False,
        swin_norm=False,
        torch_dtype=torch_dtype,
        vq_config=dict(
            embed_dim=256,
            num_embeddings=8192,
            double_latent=False,
            latent_channels=256,
            resolution=512,
            in_channels=3,
            base_channels=128,
            channel_multiplier=[1, 1, 2, 2, 4],
            num_res_blocks=2,
            attn_resolutions=[],
            dropout=0.0,
            attn_type="vanilla",
        ),
    )
    return d
