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
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.evaluation.metrics import pr_auc, roc_auc, vus_pr  # noqa: E402

VUS_BUFFER = 100  # one fixed VUS-PR buffer for every arm, so different windows stay comparable


@dataclass(frozen=True)
class ChapterSettings:
    """The chapter's hyper-parameters; every field is an ablation knob."""

    window: int = 50
    stride: int = 10
    hidden: int = 64
    layers: int = 2
    latent: int = 32
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    max_train_windows: int | None = None  # None: every stride-th window (the chapter)


class ChapterLSTMAE(nn.Module):
    """Encoder state -> latent z -> decoder initialised from z and fed z at every step."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, latent: int = 32) -> None:
        super().__init__()
        self.layers = layers
        self.encoder = nn.LSTM(n_features, hidden, layers, batch_first=True)
        self.to_latent = nn.Linear(hidden, latent)
        self.to_state = nn.Linear(latent, hidden)
        self.decoder = nn.LSTM(latent, hidden, layers, batch_first=True)
        self.output = nn.Linear(hidden, n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        z = self.to_latent(h[-1])  # (B, latent): the top layer's final hidden state
        h0 = self.to_state(z).unsqueeze(0).expand(self.layers, -1, -1).contiguous()
        c0 = torch.zeros_like(h0)
        steps = z.unsqueeze(1).expand(-1, x.shape[1], -1)  # z repeated at every step
        y, _ = self.decoder(steps, (h0, c0))
        return self.output(y)

    @torch.no_grad()
    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Squared error per step and feature (B, L, F); their mean is the chapter's window MSE."""
        self.eval()
        return (self(x) - x).pow(2)


def windows_view(series: torch.Tensor, length: int) -> torch.Tensor:
    """(T - L + 1, L, F) zero-copy view of every window of `series` (T, F)."""
    return series.unfold(0, length, 1).transpose(1, 2)


def train_chapter(
    model: ChapterLSTMAE, series: torch.Tensor, starts: torch.Tensor, settings: ChapterSettings,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The chapter's loop: shuffled mini-batches of 32, MSE, Adam, a fixed number of epochs.

    `on_epoch_end(epochs_done)` lets a caller score a snapshot (the ablation's shorter
    budgets come from the same run: the shuffles of the first k epochs do not depend on
    the total); the model is put back into training mode afterwards."""
    torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(settings.seed)
    if settings.max_train_windows and len(starts) > settings.max_train_windows:
        starts = starts[torch.randperm(len(starts), generator=gen)[: settings.max_train_windows]]
    view = windows_view(series, settings.window)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss_fn = nn.MSELoss()
    model.train()
    t0, last = time.perf_counter(), float("nan")
    for epoch in range(settings.epochs):
        order = starts[torch.randperm(len(starts), generator=gen)]
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            x = view[order[i : i + settings.batch_size]]
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
        last = total / len(order)
        if on_epoch_end is not None and epoch + 1 < settings.epochs:
            on_epoch_end(epoch + 1)
            model.train()
    model.eval()
    seconds = time.perf_counter() - t0
    return {"train_loss": last, "train_windows": len(starts), "fit_s": seconds}


class ChapterDetector:
    """fit(train rows) -> score(rows): one score per row, the chapter's last-row rule."""

    def __init__(self, settings: ChapterSettings = ChapterSettings()) -> None:
        self.settings = settings
        self.model: ChapterLSTMAE | None = None
        self.fit_info: dict[str, float] = {}

    def fit(self, train_rows: np.ndarray, starts: np.ndarray | None = None,
            on_epoch_end: Callable[[int], None] | None = None) -> ChapterDetector:
        """Train on windows of `train_rows` (T, F) at the settings' stride, or at `starts` if given."""
        s = self.settings
        series = torch.as_tensor(np.ascontiguousarray(train_rows), dtype=torch.float32)
        if starts is None:
            starts = np.arange(0, series.shape[0] - s.window + 1, s.stride)
        torch.manual_seed(s.seed)  # the initial weights are part of the seeded run
        self.model = ChapterLSTMAE(series.shape[1], s.hidden, s.layers, s.latent)
        self.fit_info = train_chapter(self.model, series, torch.as_tensor(starts, dtype=torch.long), s,
                                      on_epoch_end)
        return self

    def element_scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("fit first")
        return self.model.element_scores(x)

    @torch.no_grad()
    def window_scores(self, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """MSE of every stride-1 window of `rows`, indexed by the window's first row.

        Batches of 256: fastest for this LSTM on one CPU thread (measured: 3.2k windows/s
        vs 2.3k at 1,024 and 2.0k at 4,096)."""
        series = torch.as_tensor(np.ascontiguousarray(rows), dtype=torch.float32)
        view = windows_view(series, self.settings.window)
        out = [self.element_scores(view[i : i + batch_size]).mean(dim=(1, 2))
               for i in range(0, view.shape[0], batch_size)]
        return torch.cat(out).numpy().astype(np.float64)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """One score per row: the MSE of the window ending on it; the first L-1 rows back-filled."""
        ws = self.window_scores(rows)
        lead = self.settings.window - 1
        return np.concatenate([np.full(lead, ws[0]), ws])


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
