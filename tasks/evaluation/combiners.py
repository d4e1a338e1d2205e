"""Combining member versions' row scores into one ensemble score (pure numpy).

Two combiners. "robust_z" (below) and "cauchy" (further down: per-member tail p-values
against normal train rows, combined with the Cauchy statistic, so one member that is
sure of a row is not averaged away by the members that see nothing).

Why robust scaling: members' scores live on different scales (a PCA residual, an
autoencoder's normalised error, an isolation depth). Each member's scores are put on a
common scale by the median and interquartile range of its scores on NORMAL TRAIN rows,
which a few extreme rows cannot move. Measured on 11 dev series (validation PR-AUC), the
robust-z mean of dense_ae + usad + pca (0.459) beat the rank mean (0.409) and the p-value
mean (0.405): p-values saturate at the top of the normal reference and tie the anomalies.

The formula (M members, s_m a member's row score, c_{m,f} its contribution of feature f):

    scale_m = IQR_m of normal train row scores (the std, then 1, where the IQR is 0)
    ensemble score        E   = sum_m s_m / (M * scale_m)
    contribution of f     C_f = sum_m c_{m,f} / (M * scale_m)

E equals the mean robust z-score mean_m (s_m - median_m) / scale_m plus the constant
sum_m median_m / (M * scale_m): the same ranking, but E stays non-negative like every
other score (alert levels are multiples of the threshold), and sum_f C_f = E exactly,
because sum_f c_{m,f} = s_m for every member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

FORMULA = ("score = sum_m s_m / (M * IQR_m), contribution_f = sum_m c_mf / (M * IQR_m); "
           "IQR_m, median_m of member m's row scores on normal train rows; ranking-equivalent "
           "to the mean robust z-score mean_m (s_m - median_m) / IQR_m")


def robust_normaliser(normal_train_scores: np.ndarray) -> dict[str, float]:
    """Median and scale (IQR; the std where the IQR is 0; 1 where both are) of finite scores."""
    s = np.asarray(normal_train_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("an ensemble member needs finite scores on normal train rows")
    q25, median, q75 = np.percentile(s, [25, 50, 75])
    iqr = float(q75 - q25)
    scale = iqr if iqr > 0 else float(np.std(s))
    return {"median": float(median), "iqr": iqr, "scale": scale if scale > 0 else 1.0,
            "n": int(s.size)}


def member_weights(scales: Sequence[float]) -> np.ndarray:
    """w_m = 1 / (M * scale_m): the weight of each member's score and contributions."""
    scales = np.asarray(scales, dtype=np.float64)
    if scales.size == 0 or not (scales > 0).all():
        raise ValueError(f"member scales must be positive, got {scales.tolist()}")
    return 1.0 / (scales.size * scales)


def combine_scores(scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_m w_m s_m per row (NaN where any member is NaN: no full window covers the row)."""
    out = np.zeros(np.shape(scores[0]), dtype=np.float64)
    for s, w in zip(scores, weights, strict=True):
        out += float(w) * np.asarray(s, dtype=np.float64)
    return out


def combine_rows(contributions: Sequence[np.ndarray], weights: Sequence[float]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble scores (T,), contributions (T, F) float32) from the members' contributions;
    the score is the sum of the stored (float32) contributions, so the explanation adds up."""
    contrib = np.zeros(np.shape(contributions[0]), dtype=np.float64)
    for c, w in zip(contributions, weights, strict=True):
        contrib += float(w) * np.asarray(c, dtype=np.float64)
    contrib32 = contrib.astype(np.float32)
    return contrib32.sum(axis=1, dtype=np.float64), contrib32


def spec_weights(members: Sequence[dict[str, Any]]) -> np.ndarray:
    """The weights stored in an ensemble's config (one entry per member, in order)."""
    return np.asarray([float(m["weight"]) for m in members], dtype=np.float64)


# --- cauchy: calibrated per-member evidence, a lone catch kept ---------------------------
#
# Why: the robust-z mean divides one member's alarm by M; where a single family catches an
# anomaly (issue 18: pca alone caught a machine's events, the mean diluted its PR-AUC to
# 0.01), the ensemble lost it. Each member's row score becomes a p-value against its own
# normal train rows (an exponential tail beyond the top 1%, so the far tail stays ordered
# instead of saturating at 1/n), and the p-values combine through the Cauchy (ACAT)
# statistic, which is dominated by its smallest p-value: t_m = cot(p_m * pi / 2) >= 0
# (about 2 / (pi p_m) for small p_m), T = mean_m t_m. The score is log(1 + T), computed
# from log p-values (log-sum-exp), so no row saturates however far out it lies (a drifted
# member's normal rows must not tie with another member's real catch); it ranks rows as T
# does. Contributions: the score split over members in proportion to their t_m, then over
# features in proportion to each member's own contributions, so sum_f C_f = score.

CAUCHY_FORMULA = ("score = log(1 + mean_m cot(pi p_m / 2)), p_m member m's tail p-value "
                  "against its normal train row scores (exponential beyond the top 1%); "
                  "contribution_f = score * sum_m (t_m / sum t) * c_mf / s_m")
TAIL_MASS = 0.01
QUANTILE_LEVELS = 101
SMALL_P = 1e-8
"""Below this p-value cot(pi p / 2) is 2 / (pi p) to float precision: taken in log space."""


def tail_reference(normal_train_scores: np.ndarray, tail: float = TAIL_MASS,
                   levels: int = QUANTILE_LEVELS) -> dict[str, Any]:
    """What a member's p-values are measured against (JSON-ready): quantiles of its finite
    normal train scores up to 1 - tail, and the mean excess over the last one (the scale of
    the exponential tail fitted beyond it)."""
    s = np.asarray(normal_train_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("an ensemble member needs finite scores on normal train rows")
    probs = np.linspace(0.0, 1.0 - tail, levels)
    quantiles = np.quantile(s, probs)
    excess = s[s > quantiles[-1]] - quantiles[-1]
    scale = float(excess.mean()) if excess.size else 0.0
    if not scale > 0:  # no spread beyond the top: fall back on the body's spread
        scale = float(np.subtract(*np.quantile(s, [0.75, 0.25]))) or float(np.std(s)) or 1.0
    return {"probs": probs.tolist(), "quantiles": quantiles.tolist(), "tail": tail,
            "tail_scale": scale, "n": int(s.size)}


def tail_log_pvalues(scores: np.ndarray, reference: dict[str, Any]) -> np.ndarray:
    """log P(normal train score >= s): the empirical quantiles in the body, an exponential
    tail beyond the top quantile (linear in s in log space, so never saturating);
    continuous and non-increasing in s; NaN stays NaN."""
    s = np.asarray(scores, dtype=np.float64)
    q = np.asarray(reference["quantiles"])
    body = 1.0 - np.interp(s, q, np.asarray(reference["probs"]), left=0.0)
    far = np.log(reference["tail"]) - (s - q[-1]) / reference["tail_scale"]
    with np.errstate(divide="ignore"):
        out = np.where(s >= q[-1], far, np.log(np.maximum(body, reference["tail"])))
    return np.where(np.isnan(s), np.nan, np.minimum(out, 0.0))


def tail_pvalues(scores: np.ndarray, reference: dict[str, Any]) -> np.ndarray:
    """P(normal train score >= s) (tail_log_pvalues, exponentiated; 0 far out)."""
    return np.exp(tail_log_pvalues(scores, reference))


def _log_cauchy_terms(scores: Sequence[np.ndarray], references: Sequence[dict[str, Any]]
                      ) -> np.ndarray:
    """(M, T) log(t_m / M), t_m = cot(pi p_m / 2), from log p-values (exact, no overflow)."""
    m = len(scores)
    out = []
    for s, r in zip(scores, references, strict=True):
        log_p = tail_log_pvalues(s, r)
        p = np.exp(np.maximum(log_p, np.log(SMALL_P)))
        with np.errstate(divide="ignore"):
            exact = -np.log(np.tan(np.pi * p / 2))
        out.append(np.where(log_p < np.log(SMALL_P), np.log(2 / np.pi) - log_p, exact)
                   - np.log(m))
    return np.asarray(out)


def _score_and_shares(log_terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log(1 + T) per row, each member's share t_m / sum t per row) from log(t_m / M)."""
    with np.errstate(invalid="ignore"):
        top = np.max(log_terms, axis=0)
        log_total = top + np.log(np.sum(np.exp(log_terms - top), axis=0))
        shares = np.exp(log_terms - log_total)
    return np.logaddexp(0.0, log_total), shares


def cauchy_rows(contributions: Sequence[np.ndarray], references: Sequence[dict[str, Any]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble scores (T,), contributions (T, F) float32) under the Cauchy combiner; the
    score is the sum of the stored contributions, so the explanation adds up."""
    parts = [np.asarray(c, dtype=np.float64) for c in contributions]
    totals = [c.sum(axis=1) for c in parts]
    score, shares = _score_and_shares(_log_cauchy_terms(totals, references))
    out = np.zeros(parts[0].shape, dtype=np.float64)
    for c, total, share in zip(parts, totals, shares, strict=True):
        with np.errstate(invalid="ignore", divide="ignore"):
            within = np.where((total > 0)[:, None], c / total[:, None], 1.0 / c.shape[1])
        out += (score * share)[:, None] * within
    contrib32 = out.astype(np.float32)
    return contrib32.sum(axis=1, dtype=np.float64), contrib32


def cauchy_scores(scores: Sequence[np.ndarray], references: Sequence[dict[str, Any]]
                  ) -> np.ndarray:
    """The Cauchy ensemble score from the members' row scores alone (training's row scores)."""
    return _score_and_shares(_log_cauchy_terms(scores, references))[0]


def row_combiner(spec: dict[str, Any]
                 ) -> Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """members' (T, F) contributions -> (scores, contributions), per an ensemble's config.json
    `ensemble` section (versions before the Cauchy combiner have no `combiner`: robust_z)."""
    members = spec["members"]
    if spec.get("combiner", "robust_z") == "cauchy":
        references = [m["reference"] for m in members]
        return lambda parts: cauchy_rows(parts, references)
    weights = spec_weights(members)
    return lambda parts: combine_rows(parts, weights)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors (finite rows of both)."""
    ok = np.isfinite(a) & np.isfinite(b)
    ra, rb = (np.argsort(np.argsort(x[ok], kind="stable")).astype(np.float64) for x in (a, b))
    if ra.size < 2 or ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def diverse_members(normal_scores: Sequence[np.ndarray], max_correlation: float) -> list[int]:
    """Indices of the members kept, in the order given (strongest first): a member joins only
    if its rank correlation with every member already kept, on normal rows, is at most
    `max_correlation`. Two members that rank normal rows alike repeat one view (and weigh
    it twice); at least two members are kept (the least correlated one is added back)."""
    kept = [0] if normal_scores else []
    for i in range(1, len(normal_scores)):
        if all(rank_correlation(normal_scores[i], normal_scores[k]) <= max_correlation
               for k in kept):
            kept.append(i)
    if len(kept) < 2 and len(normal_scores) >= 2:
        rest = [i for i in range(len(normal_scores)) if i not in kept]
        kept.append(min(rest, key=lambda i: rank_correlation(normal_scores[i],
                                                             normal_scores[kept[0]])))
    return kept
