"""Fixed token ids of PURE's Chameleon vocabulary and the LlamaGen code <-> token-id map.

Ids come from spec pure.md §2: `<reservedNNNNN>` has id NNNNN + 4; image tokens occupy
4..8195 (Chameleon's original image slots) and 65536..73727 (the 8,192 slots PURE added),
together the 16,384 LlamaGen VQ-8 codes. Which code sits at which id is given by the token
*names* ("IMGIMG" + decimal digits spelled A..J + "Z"), never by id arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class SpecialIds:
    """Special token ids (plain ints so they work in tensor comparisons and as defaults)."""

    BOS = 0  # <s>, prepended once
    PAD = 1  # <pad>
    EOS = 2  # </s> (never produced by PURE; generation stops on EOT)
    UNK = 3  # <unk>
    IMG_END = 8196  # <eoss>
    IMG_START = 8197  # <racm3:break>
    EOT = 8710  # <reserved08706>: ends every turn; generation EOS
    IMAGE_PLACEHOLDER_ID = 8711  # "<image>" of Chameleon's vocabulary_map [inferred]; unused by PURE
    ROW_END = 8803  # <reserved08799>: after every latent row
    SIZE_BASE = 8804  # <reserved0880n> = 8804 + n, n = side / 32 (h first, then w)
    IMAGE_ID_RANGES = ((4, 8196), (65536, 73728))  # half-open ranges of image-token ids
    IMAGE_PLACEHOLDER = "<|image|>"  # text placeholder (added token) replaced by image blocks

    @staticmethod
    def reserved_name(token_id: int) -> str:
        return f"<reserved{token_id - 4:05d}>"


NUM_CODES = 16384  # LlamaGen VQ-8 codebook size
_DIGITS = "ABCDEFGHIJ"


def code_token_name(code: int) -> str:
    """Name of the token carrying LlamaGen code `code`: 123 -> 'IMGIMGBCDZ'."""
    return "IMGIMG" + "".join(_DIGITS[int(d)] for d in str(int(code))) + "Z"


def parse_code_token_name(name: str) -> int | None:
    """Inverse of `code_token_name`; None for any other name."""
    if not (name.startswith("IMGIMG") and name.endswith("Z")) or len(name) < 8:
        return None
    body = name[6:-1]
    if not all(c in _DIGITS for c in body):
        return None
    return int("".join(str(_DIGITS.index(c)) for c in body))


class ImageCodeMap:
    """Bidirectional LlamaGen code <-> token id map.

    `code_to_id`: Long (num_codes,); `id_to_code`: Long (vocab_size,) with -1 for non-image ids.
    Build with `from_vocabulary_map` (HF config.json), `from_tokenizer_json` (tokenizer file) or
    `synthetic()` (tests: same two id ranges, optionally shuffled to catch id-arithmetic bugs)."""

    def __init__(self, code_to_id: torch.Tensor, vocab_size: int = 73728, source: str = "?"):
        code_to_id = torch.as_tensor(code_to_id, dtype=torch.long)
        if code_to_id.unique().numel() != code_to_id.numel():
            raise ValueError(f"image code map from {source}: token ids are not unique")
        if code_to_id.min() < 0 or code_to_id.max() >= vocab_size:
            raise ValueError(f"image code map from {source}: ids outside [0, {vocab_size})")
        self.code_to_id = code_to_id
        self.id_to_code = torch.full((vocab_size,), -1, dtype=torch.long)
        self.id_to_code[code_to_id] = torch.arange(code_to_id.numel())
        self.vocab_size, self.source = vocab_size, source

    @property
    def num_codes(self) -> int:
        return self.code_to_id.numel()

    @property
    def image_ids(self) -> torch.Tensor:
        """Sorted ids of all image tokens (for masks)."""
        return self.code_to_id.sort().values

    def image_mask(self, device=None) -> torch.Tensor:
        """Bool (vocab_size,) mask of image-token ids."""
        return (self.id_to_code >= 0).to(device) if device is not None else self.id_to_code >= 0

    def to_ids(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"image codes must lie in [0, {self.num_codes}); got {codes.min()}..{codes.max()}")
        return self.code_to_id.to(codes.device)[codes]

    def to_codes(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids outside the vocabulary [0, {self.vocab_size})")
        codes = self.id_to_code.to(ids.device)[ids]
        if (codes < 0).any():
            bad = ids[codes < 0].flatten()[:5].tolist()
            raise ValueError(f"non-image token ids where image codes were expected: {bad}")
        return codes

    def to_vocabulary_map(self) -> dict[str, int]:
        """IMGIMG entries of a vocabulary_map describing this map."""
        return {code_token_name(c): int(i) for c, i in enumerate(self.code_to_id.tolist())}

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def from_vocabulary_map(
        cls, vocab: dict[str, int], vocab_size: int = 73728, source: str = "vocabulary_map", num_codes: int = NUM_CODES
    ) -> ImageCodeMap:
        code_to_id = torch.full((num_codes,), -1, dtype=torch.long)
        for name, tid in vocab.items():
            code = parse_code_token_name(name)
            if code is not None and code < num_codes:
                code_to_id[code] = int(tid)
        missing = (code_to_id < 0).nonzero().flatten()
        if missing.numel():
            raise ValueError(
                f"{source}: {missing.numel()} of {num_codes} image codes have no IMGIMG token "
                f"(first missing code {int(missing[0])})"
            )
        return cls(code_to_id, vocab_size, source)

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, vocab_size: int = 73728) -> ImageCodeMap:
        """Read the IMGIMG entries of a `tokenizers` JSON (model vocab + added tokens) or of an
        HF config.json carrying `vocabulary_map`."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read tokenizer/config file {path}: {exc}") from None
        if "vocabulary_map" in raw:
            vocab = dict(raw["vocabulary_map"])
        else:
            vocab = dict((raw.get("model") or {}).get("vocab") or {})
            vocab.update({t["content"]: t["id"] for t in raw.get("added_tokens", [])})
        return cls.from_vocabulary_map(vocab, vocab_size, source=str(path))

    @classmethod
    def synthetic(cls, shuffle: bool = False, seed: int = 0, vocab_size: int = 73728) -> ImageCodeMap:
        """Codes 0..8191 -> ids 4..8195, codes 8192..16383 -> 65536..73727 (both real ranges);
        `shuffle=True` permutes the assignment so code arithmetic bugs show up in tests."""
        ids = torch.cat([torch.arange(*r) for r in SpecialIds.IMAGE_ID_RANGES])
        if shuffle:
            ids = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed))]
        return cls(ids, vocab_size, source="synthetic")
