"""Caption a folder of HQ images for PURE's answers (captions JSONL keyed by image id).

    python data/caption_images.py --images data/LSDIR/HR/train --model /models/llava-1.5-13b-hf \
        --out data/captions/lsdir.jsonl [--batch-size 8 --device cuda --dtype fp16]

`--model` is a local Hugging Face vision-language model directory (LLaVA-1.5 as in PURE, or any
model AutoModelForImageTextToText loads). Ids are paths relative to --images without extension,
which is what launch/pretokenize_pure.py looks up. Rerunning resumes (ids already in --out are
skipped). `--stub` writes deterministic placeholder captions (no model).
"""

import argparse
import sys

from pure.captions import DEFAULT_PROMPT, HFCaptioner, StubCaptioner, caption_folder


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="folder of HQ images (recursive)")
    ap.add_argument("--out", required=True, help="captions JSONL to write/append")
    ap.add_argument("--model", help="local HF VLM directory")
    ap.add_argument("--stub", action="store_true", help="placeholder captions, no model")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    if not a.stub and not a.model:
        ap.error("give --model PATH (a local HF vision-language model) or --stub")
    cap = StubCaptioner() if a.stub else HFCaptioner(a.model, a.prompt, a.device, a.dtype, a.max_new_tokens)
    stats = caption_folder(a.images, a.out, cap, a.batch_size, a.limit)
    print(stats)
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
