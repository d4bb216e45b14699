"""Shared PURE fixtures: tiny Chameleon (real 73,728 vocab), tiny LlamaGen VQ, stand-in tokenizer.

All are deterministic (fixed seeds); models are rebuilt per test because tests may train or
edit them, while the tokenizer (read-only) is built once per session.
"""

import pytest
import torch

from pure.model import ChameleonForCausalLM, chameleon_config
from pure.model.vq import VQModel, vq_config
from pure.tokenizer import ImageCodeMap, TextTokenizer, build_test_tokenizer


@pytest.fixture
def tiny_config():
    """ChameleonConfig "tiny": hidden 64, 2 layers, 4 heads, vocab 73,728, dropout 0."""
    return chameleon_config("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    """Seeded tiny ChameleonForCausalLM in fp32, eval mode."""
    torch.manual_seed(0)
    return ChameleonForCausalLM(tiny_config).eval()


@pytest.fixture
def tiny_vq():
    """Seeded tiny LlamaGen VQ (ch 32, ch_mult (1, 2) -> downsampling 2, 64 codes), eval mode."""
    torch.manual_seed(0)
    return VQModel(vq_config("tiny")).eval()


@pytest.fixture(scope="session")
def test_tokenizer_path(tmp_path_factory):
    """Path of a stand-in tokenizer.json with PURE's special/image ids at their real positions."""
    return build_test_tokenizer(tmp_path_factory.mktemp("pure_tokenizer"))


@pytest.fixture(scope="session")
def test_tokenizer(test_tokenizer_path):
    """TextTokenizer over the stand-in file; `.code_map` is the synthetic two-range map."""
    return TextTokenizer.from_file(test_tokenizer_path)


@pytest.fixture(scope="session")
def code_map():
    """Synthetic ImageCodeMap: codes 0..8191 -> ids 4..8195, 8192..16383 -> 65536..73727."""
    return ImageCodeMap.synthetic()


@pytest.fixture(scope="module")
def model():
    """Tiny decoder in eval mode, seeded, shared by a module's generation tests."""
    from pure.model import ChameleonForCausalLM, chameleon_config

    torch.manual_seed(0)
    return ChameleonForCausalLM(chameleon_config("tiny")).eval()


@pytest.fixture(scope="module")
def image_mask():
    """Vocabulary mask of the 16,384 image ids (both id ranges)."""
    from pure.tokenizer import ImageCodeMap

    return ImageCodeMap.synthetic().image_mask()
