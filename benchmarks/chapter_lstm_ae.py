"""The reference chapter's LSTM autoencoder (section 4.4.3), re-implemented as a baseline detector.

Why: issue 10 reports that the chapter's LSTM-AE, run in its own settings, reaches
PR-AUC ~0.55 on SMD machine-2-1's score split while nightowl's champion reaches
0.30. Before anything in the pipeline is changed that number has to be reproduced
with code we own, so that the ablation (benchmarks/ablation.py) can move one
setting at a time from the chapter's configuration towards nightowl's.

What "the chapter's own settings" means here (read from the chapter, code not copied):

- architecture: encoder LSTM(F -> 64, 2 layers), its last layer's final hidden state
  -> Linear(64 -> 32) = latent z; decoder LSTM(input 32 -> 64, 2 layers) whose
  initial hidden state is Linear(32 -> 64)(z) repeated for both layers and whose
  initial cell state is zero, fed z repeated at every step; Linear(64 -> F) output;
- training: MSE loss, Adam lr 1e-3, batch 32, shuffled every epoch, last partial
  batch kept, 20 epochs, no early stopping and no holdout; windows of 50 rows cut
  from the train file with stride 10 (issue 10's setting);
- data as shipped (SMD / ASD are already min-max scaled to [0, 1]): no re-scaling;
- score: the MSE of a window (mean over its 50 steps and all features), given to the
  window's LAST row; scoring windows slide with stride 1.

Rows without a full window ending on them (the first window - 1 rows of the block
scored) get the score of the first full window (a back-fill, so every row has a
finite score; on SMD those rows are the first 49 validation rows, never score rows).

    cd /work/wt-detect && OMP_NUM_THREADS=1 taskset -c 1 \
        /work/main/.venv/bin/python benchmarks/chapter_lstm_ae.py --seeds 0,1,2

The model and its loop live in tasks/evaluation/baselines.py, where the benchmark runner's
`--baselines` uses them on its own rows; this script reproduces issue 10's number.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.evaluation.baselines import (  # noqa: E402, F401 - re-exported for the ablation
    ChapterDetector,
    ChapterLSTMAE,
    ChapterSettings,
    train_chapter,
    windows_view,
)
from tasks.evaluation.metrics import pr_auc, roc_auc, vus_pr  # noqa: E402

VUS_BUFFER = 100  # one fixed VUS-PR buffer for every arm, so different windows stay comparable


def main(argv: list[str] | None = None) -> None:
    from benchmarks.dev_series import load_series

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="smd")
    parser.add_argument("--series", default="machine-2-1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=ChapterSettings.epochs)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "chapter_lstm_ae.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    s = load_series(args.kind, args.series)
    train = s.x[s.mask("train")]
    test_mask = ~s.mask("train")  # validation + score: the test file, contiguous after train
    test, labels, split = s.x[test_mask], s.labels[test_mask], s.split[test_mask]
    rows = []
    for seed in (int(v) for v in args.seeds.split(",")):
        settings = ChapterSettings(seed=seed, epochs=args.epochs)
        det = ChapterDetector(settings).fit(train)
        t0 = time.perf_counter()
        scores = det.score(test)
        score_s = time.perf_counter() - t0
        row = {"series": s.key, "seed": seed, **asdict(settings), **det.fit_info, "score_s": score_s}
        for part in ("validation", "score"):
            m = split == part
            row[f"{part}_pr_auc"] = pr_auc(labels[m], scores[m])
            row[f"{part}_roc_auc"] = roc_auc(labels[m], scores[m])
            row[f"{part}_vus_pr"] = vus_pr(labels[m], scores[m], max_buffer=VUS_BUFFER)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    import polars as pl

    table = pl.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.write_csv(args.out)
    for part in ("validation", "score"):
        v = table[f"{part}_pr_auc"].to_numpy()
        print(f"{part} PR-AUC mean {v.mean():.3f} sd {v.std(ddof=1) if len(v) > 1 else 0:.3f} "
              f"(seeds {args.seeds}): {np.round(v, 3).tolist()}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
