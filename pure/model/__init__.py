"""PURE modules: the Chameleon decoder and the LlamaGen VQ-8 tokenizer (pure nn.Modules)."""

from .chameleon import ChameleonForCausalLM, ChameleonModel
from .config import ChameleonConfig, chameleon_config, config_from_dict, from_hf_config_json
from .kv_cache import KVCache
from .vq import VQConfig, VQModel, vq_config

__all__ = [
    "ChameleonConfig",
    "ChameleonForCausalLM",
    "ChameleonModel",
    "KVCache",
    "VQConfig",
    "VQModel",
    "chameleon_config",
    "config_from_dict",
    "from_hf_config_json",
    "vq_config",
]
