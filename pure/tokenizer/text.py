"""Text tokenizer wrapper (HF `tokenizers` JSON) and a small stand-in tokenizer for tests.

The real tokenizer is the fast tokenizer shipped with `nonwhy/PURE` (Chameleon BPE plus
`<|image|>`). Tests cannot download it, so `build_test_tokenizer` writes a byte-level BPE whose
vocabulary is padded so every special and image token sits at its real id (spec §2).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .special import ImageCodeMap, SpecialIds, code_token_name

_TOKENIZER_FILES = ("tokenizer.json", "text_tokenizer.json")
# Specials the whole pipeline hard-codes; a tokenizer placing them elsewhere is rejected on load.
# BOS is deliberately absent: it is read from the file (spec §2), 0 in the released tokenizer.
_FIXED = {
    "<eoss>": SpecialIds.IMG_END,
    "<racm3:break>": SpecialIds.IMG_START,
    SpecialIds.reserved_name(SpecialIds.EOT): SpecialIds.EOT,
    SpecialIds.reserved_name(SpecialIds.ROW_END): SpecialIds.ROW_END,
}


class TextTokenizer:
    """Encode/decode text pieces; carries the image code map of the same vocabulary.

    Text pieces are tokenised without automatic specials (PURE concatenates separately
    tokenised pieces with image blocks and adds BOS once itself)."""

    special = SpecialIds

    def __init__(self, tokenizer: Tokenizer, code_map: ImageCodeMap, source: str = "?"):
        self.tk, self.code_map, self.source = tokenizer, code_map, source
        for name, want in _FIXED.items():
            got = tokenizer.token_to_id(name)
            if got is not None and got != want:
                raise ValueError(f"tokenizer {source}: {name} has id {got}, PURE expects {want}")

    @classmethod
    def from_file(cls, path: str | Path, code_map: ImageCodeMap | None = None) -> TextTokenizer:
        """`path`: a tokenizer JSON or a directory holding tokenizer.json / text_tokenizer.json.
        The image code map comes from `code_map`, else the tokenizer's own IMGIMG entries, else
        the `vocabulary_map` of a config.json next to it."""
        path = Path(path)
        file = path
        if path.is_dir():
            found = [path / n for n in _TOKENIZER_FILES if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"no {' or '.join(_TOKENIZER_FILES)} in {path}")
            file = found[0]
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            tk = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"cannot parse tokenizer {file}: {exc}") from None
        if code_map is None:
            code_map = _code_map_near(file)
        return cls(tk, code_map, str(file))

    @classmethod
    def from_pretrained(cls, name_or_path: str, cache_dir: str | None = None, **kwargs) -> TextTokenizer:
        """A local path, or a hub id resolved *only* through the local HF cache (no network)."""
        if Path(name_or_path).exists():
            return cls.from_file(name_or_path, **kwargs)
        from huggingface_hub import try_to_load_from_cache

        for name in _TOKENIZER_FILES:
            hit = try_to_load_from_cache(name_or_path, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return cls.from_file(hit, **kwargs)
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local path nor in the local HF cache "
            f"(download it first, e.g. `huggingface-cli download {name_or_path}`)"
        )

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tk.id_to_token(int(token_id))

    @property
    def bos_id(self) -> int:
        """The tokenizer's own `<s>` id (not the HF config's bos_token_id default of 1)."""
        found = self.tk.token_to_id("<s>")
        return SpecialIds.BOS if found is None else found

    @property
    def eos_id(self) -> int:
        return SpecialIds.EOT

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)


def _code_map_near(file: Path) -> ImageCodeMap:
    try:
        return ImageCodeMap.from_tokenizer_json(file)
    except ValueError as first:
        config = file.parent / "config.json"
        if config.is_file():
            return ImageCodeMap.from_tokenizer_json(config)
        raise ValueError(f"{first}; and no config.json with a vocabulary_map next to it") from None


# --------------------------------------------------------------------------- test tokenizer
_CORPUS = [
    "Perceive the degradation level, understand the image content, and restore the high-quality image.",
    "Small blur, small noise. Medium blur, medium noise. Large blur, large noise.",
    "The image features a cat sitting on a wooden table next to a cup of coffee in a bright room.",
    "A photograph of an astronaut, a rocket on the launch pad, a field of distant galaxies and a retina.",
    "The scene shows buildings, trees, people, water, mountains, sky and clouds with natural colors.",
]
_TEXT_BASE = 9004  # text tokens start after the reserved block that holds 8710, 8803 and 8804+n
_VOCAB = 73728
_IMAGE_PLACEHOLDER_ID = _VOCAB  # `<|image|>` never reaches the model, so it may sit past the model vocab


def build_test_tokenizer(path: str | Path, bpe_size: int = 600) -> Path:
    """Write a small byte-level BPE tokenizer JSON with PURE's special/image ids and return the
    path. `path` may be a file or a directory (then `tokenizer.json` inside it). Any text
    round-trips through encode/decode; image tokens use the synthetic code map layout."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    spec = json.loads(bpe.to_str())
    text_vocab = spec["model"]["vocab"]

    names: dict[int, str] = {
        0: "<s>",
        1: "<pad>",
        2: "</s>",
        3: "<unk>",
        SpecialIds.IMG_END: "<eoss>",
        SpecialIds.IMG_START: "<racm3:break>",
    }
    code_map = ImageCodeMap.synthetic()
    names.update({int(i): code_token_name(c) for c, i in enumerate(code_map.code_to_id.tolist())})
    names.update({_TEXT_BASE + i: tok for tok, i in text_vocab.items()})
    for i in range(_VOCAB):  # pad every free id with a reserved name so ids are dense like the real vocab
        names.setdefault(i, SpecialIds.reserved_name(i))
    spec["model"]["vocab"] = {name: i for i, name in sorted(names.items())}
    specials = [0, 1, 2, 3, SpecialIds.IMG_END, SpecialIds.IMG_START, SpecialIds.EOT]
    spec["added_tokens"] = [
        dict(id=i, content=names[i], single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for i in specials
    ]
    spec["added_tokens"].append(
        dict(
            id=_IMAGE_PLACEHOLDER_ID,
            content=SpecialIds.IMAGE_PLACEHOLDER,
            single_word=False,
            lstrip=False,
            rstrip=False,
            normalized=False,
            special=True,
        )
    )
    text = json.dumps(spec, ensure_ascii=False)
    Tokenizer.from_str(text)  # fail here, not in the caller, if the layout is invalid
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
