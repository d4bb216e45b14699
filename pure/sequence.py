"""Token layout of one PURE training example and of the inference prompt (spec pure.md §4.2, §7.1).

    [BOS] INSTRUCTION [LQ block] [8710]                                  labels -100
    "<degradation sentence> <caption> " [HQ block] [8710]                supervised

No role strings: turns are separated only by the end-of-turn id 8710. Each text piece is
tokenised on its own (no BOS/EOS added) and concatenated with the image blocks, which is what
the official item processor does when it splits a message at `<|image|>`. Labels are aligned
with tokens (unshifted); the loss shifts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from pure.degradation_text import degradation_sentence  # noqa: F401  (contract: pure.sequence.degradation_sentence)
from pure.tokenizer import SpecialIds, image_block

IGNORE = -100
# The human turn: PURE README instruction; the trailing `<|image|>` placeholder becomes the LQ block.
INSTRUCTION = "Perceive the degradation level, understand the image content, and restore the high-quality image. "


class TextEncoder(Protocol):
    """What the builders need from a tokenizer bundle (pure.tokenizer provides it)."""

    code_map: object

    def encode(self, text: str) -> list[int]: ...


def _codes(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"image codes must be a (h, w) grid, got shape {tuple(t.shape)}")
    return t


def answer_text(degradation_text: str, caption: str | None) -> str:
    """Assistant text before the HQ block: "<degradation sentence> <caption> " (trailing space
    stands where the official message had " <|image|>")."""
    caption = (caption or "").strip()
    parts = [degradation_text.strip()] + ([caption] if caption else [])
    return " ".join(parts) + " "


def build_inference_prompt(lq_codes, tok: TextEncoder, instruction: str = INSTRUCTION) -> list[int]:
    """[BOS] + instruction + LQ block + [8710]; the model continues with the answer."""
    return (
        [SpecialIds.BOS]
        + list(tok.encode(instruction))
        + image_block(_codes(lq_codes), tok.code_map)
        + [SpecialIds.EOT]
    )


def build_training_example(
    lq_codes,
    hq_codes,
    degradation_text: str,
    caption: str | None,
    tok: TextEncoder,
    instruction: str = INSTRUCTION,
) -> tuple[list[int], list[int]]:
    """(tokens, labels) of one example; the whole prompt (BOS, instruction, LQ, its 8710) is -100."""
    prompt = build_inference_prompt(lq_codes, tok, instruction)
    answer = list(tok.encode(answer_text(degradation_text, caption)))
    response = answer + image_block(_codes(hq_codes), tok.code_map) + [SpecialIds.EOT]
    return prompt + response, [IGNORE] * len(prompt) + response


def image_label_mask(labels: torch.Tensor, code_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of supervised label positions that belong to an image block.

    Everything from IMG_START through IMG_END is an image token: start/end, the two grid ids,
    codes and row ends. Computed from structure (first IMG_START..next IMG_END per row) so it
    does not depend on which id range a code map uses.
    """
    starts = (labels == SpecialIds.IMG_START).int().cumsum(-1)
    ends = (labels == SpecialIds.IMG_END).int().cumsum(-1)
    # Inside a block: more starts than ends seen so far, or this position is the end itself.
    inside = (starts > ends) | (labels == SpecialIds.IMG_END)
    return inside & (labels != IGNORE)


def pad_batch(seqs: Sequence[tuple[list[int], list[int]]], pad_to_multiple: int = 1, pad_id: int = 0):
    """Right-pad (tokens, labels) pairs: tokens with `pad_id` (official 0), labels with -100.

    Right padding under a causal mask never changes real positions, so no attention mask is
    needed for training. Returns input_ids, labels (B, T) and the number of padded positions.
    """
    longest = max(len(t) for t, _ in seqs)
    T = -(-longest // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (t, l) in enumerate(seqs):
        ids[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        lab[i, : len(l)] = torch.as_tensor(l, dtype=torch.long)
    return ids, lab, int(T * len(seqs) - sum(len(t) for t, _ in seqs))
