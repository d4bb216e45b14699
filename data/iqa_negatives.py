"""VARSR negatives (label 1): low-MOS images of IQA datasets, by VARSR's selection rule.

Download (not done here) whichever IQA sets you have rights to, with their score files:
KonIQ-10k (http://database.mmsp-kn.de/koniq-10k-database.html), SPAQ, LIVE Challenge (CLIVE),
KADID-10k, FLIVE/PaQ-2-PiQ, AVA. For each set the threshold is τ = min(score) + s·max(score)
(literally min + s·max, VARSR ``dataloader/localdataset_lpm.py``) and images with score < τ
are kept; s per set: SPAQ 0.4, KonIQ 0.6, CLIVE 0.6, KADID 0.6, FLIVE 0.6, FLIVE patches 0.5,
AVA 0.32 (common.md §2.5). The natural count ratio of positives to negatives is kept.

    python data/iqa_negatives.py --scores koniq10k_scores.csv --images /data/koniq/1024x768 \
        --dataset koniq10k --out /data/negatives/koniq.csv [--path-col image_name --score-col MOS]

Writes a ``path,label`` manifest (label 1) for ``{root: <csv>, kind: manifest}``; several sets
can be listed as several sources (VARSR negatives resize their shorter side to 512).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.data.prep import NEGATIVE_S, read_scores, select_negatives  # noqa: E402
from common.data.sources import write_manifest  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", required=True, help="CSV with an image column and a score column")
    ap.add_argument("--images", required=True, help="folder the image names are relative to")
    ap.add_argument("--dataset", choices=sorted(NEGATIVE_S), help="sets s from VARSR's table")
    ap.add_argument("--s", type=float, default=None, help="explicit s (overrides --dataset)")
    ap.add_argument("--path-col", default=None, help="image column (default: first)")
    ap.add_argument("--score-col", default=None, help="score column (default: last)")
    ap.add_argument("--out", required=True, help="manifest CSV to write")
    a = ap.parse_args(argv)
    if a.s is None and a.dataset is None:
        ap.error("give --dataset or --s")
    s = a.s if a.s is not None else NEGATIVE_S[a.dataset]
    scores = read_scores(a.scores, a.path_col, a.score_col)
    keep = select_negatives(scores, s)
    root = Path(a.images).resolve()
    rows = [(str(root / p) if not os.path.isabs(p) else p, 1) for p in keep]
    missing = [p for p, _ in rows if not os.path.isfile(p)]
    if missing:
        print(f"warning: {len(missing)} selected images are missing, e.g. {missing[:3]}")
    out = write_manifest([r for r in rows if os.path.isfile(r[0])], a.out)
    print(f"s={s}: kept {len(keep)}/{len(scores)} images with score < min + s*max -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
