"""Image descriptions for PURE's answers: a captions JSONL keyed by image id, and an HF VLM captioner.

PURE describes every HQ image with LLaVA-v1.5-13B prompted "Please describe this image in detail."
(issue #9); the labelling code is not released. Ours: any local Hugging Face vision-language
model that `AutoProcessor` + `AutoModelForImageTextToText` can load (LLaVA, BLIP, ...), greedy
decoding, one JSON line {"id", "caption"} per image. The file is appended to as it goes, so an
interrupted run resumes by skipping ids already present. `StubCaptioner` is the deterministic
stand-in for tests and for runs without a VLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

DEFAULT_PROMPT = "Please describe this image in detail."


def load_captions(path: str | Path) -> dict[str, str]:
    """{id: caption} from a JSONL file; a malformed line is a one-line error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["id"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON object with id and caption ({e})") from None
    return out


def append_captions(path: str | Path, rows: Iterable[tuple[str, str]]) -> None:
    """Append {id, caption} lines and flush+fsync, so a crash loses at most the current batch."""
    import os

    with open(path, "a", encoding="utf-8") as f:
        for image_id, caption in rows:
            f.write(json.dumps({"id": image_id, "caption": caption}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class StubCaptioner:
    """Deterministic captions ("An image named <id>.") for tests and caption-less runs."""

    def __call__(self, images, ids=None) -> list[str]:
        return [f"An image named {i}." for i in (ids or range(len(images)))]


class HFCaptioner:
    """Greedy captions from a local HF vision-language model directory (no hub access)."""

    def __init__(
        self,
        model_path: str | Path,
        prompt: str = DEFAULT_PROMPT,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 256,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        p = Path(model_path)
        if not p.is_dir():
            raise FileNotFoundError(f"captioning model directory not found: {p}")
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        torch_dtype = {
            "auto": (torch.float16 if self.device.type == "cuda" else torch.float32),
            "fp32": torch.float32,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[dtype]
        self.processor = AutoProcessor.from_pretrained(str(p), local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(str(p), local_files_only=True, dtype=torch_dtype)
        self.model.to(self.device).eval()
        self.prompt, self.max_new_tokens, self.dtype = prompt, max_new_tokens, torch_dtype

    def _text(self) -> str:
        # Chat VLMs (LLaVA-1.5 etc.) need their template around the prompt; captioners such as
        # BLIP take the prompt as a plain prefix.
        if getattr(self.processor, "chat_template", None):
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(msgs, add_generation_prompt=True)
        return self.prompt

    def __call__(self, images, ids=None) -> list[str]:
        import torch

        text = self._text()
        inputs = self.processor(images=list(images), text=[text] * len(images), return_tensors="pt", padding=True)
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if not self.model.config.is_encoder_decoder and out.shape[1] >= inputs["input_ids"].shape[1]:
            prefix = out[:, : inputs["input_ids"].shape[1]]
            if torch.equal(prefix.cpu(), inputs["input_ids"].cpu()):
                out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only VLMs echo the prompt
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [_strip_prompt(t, self.prompt) for t in texts]


def _strip_prompt(text: str, prompt: str) -> str:
    text = text.strip()
    low, p = text.lower(), prompt.lower().strip()
    return text[len(p) :].strip() if p and low.startswith(p) else text


def caption_folder(
    folder: str | Path, out_path: str | Path, captioner: Callable, batch_size: int = 4, limit: int | None = None
) -> dict:
    """Caption every image under `folder` into `out_path` (ids = relative path without extension);
    resumes by skipping ids already in the file; unreadable images are skipped and counted."""
    from PIL import Image

    from common.data.io import BadImageError, read_image
    from common.data.sources import walk_images

    folder, out_path = Path(folder), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    have = load_captions(out_path) if out_path.is_file() else {}
    paths = walk_images(folder)[:limit] if limit else walk_images(folder)
    todo = [(str(Path(p).relative_to(folder).with_suffix("")), p) for p in paths]
    todo = [(i, p) for i, p in todo if i not in have]
    bad = 0
    for s in range(0, len(todo), batch_size):
        ids, imgs = [], []
        for image_id, p in todo[s : s + batch_size]:
            try:
                imgs.append(Image.fromarray(read_image(p)))
                ids.append(image_id)
            except BadImageError:
                bad += 1
        if imgs:
            append_captions(out_path, zip(ids, captioner(imgs, ids)))
    return {"captioned": len(todo) - bad, "skipped_existing": len(have), "bad": bad}
