"""PURE tokenisation: special ids, LlamaGen code <-> token-id map, text tokenizer, image blocks."""

from .image import (
    block_to_codes,
    block_to_image,
    bucket_sizes,
    choose_bucket,
    decode_to_uint8,
    image_block,
    image_to_block,
    parse_image_block,
    preprocess_image,
)
from .special import NUM_CODES, ImageCodeMap, SpecialIds, code_token_name, parse_code_token_name
from .text import TextTokenizer, build_test_tokenizer

__all__ = [
    "NUM_CODES",
    "ImageCodeMap",
    "SpecialIds",
    "TextTokenizer",
    "block_to_codes",
    "block_to_image",
    "bucket_sizes",
    "build_test_tokenizer",
    "choose_bucket",
    "code_token_name",
    "decode_to_uint8",
    "image_block",
    "image_to_block",
    "parse_code_token_name",
    "parse_image_block",
    "preprocess_image",
]
