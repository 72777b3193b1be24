"""Paired statistics for A/B experiments: one arm against a baseline, prompt × seed by prompt × seed.

Run time and GPU-seconds: the relative difference of means, a paired bootstrap 95% CI and
the Wilcoxon signed-rank test. Edit distance: the difference of means, same CI and test.
Pass rate: the difference in points, a paired bootstrap CI and McNemar's exact test (a
binomial test on the discordant pairs). Below MIN_PAIRS pairs nothing is claimed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_PAIRS = 6
ALPHA = 0.05
RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    metric: str
    n: int
    estimate: float | None
    low: float | None
    high: float | None
    p_value: float | None
    significant: bool
    sentence: str

    @property
    def enough(self) -> bool:
        return self.estimate is not None


def _bootstrap(a: np.ndarray, b: np.ndarray, statistic) -> tuple[float, float]:
    with warnings.catch_warnings():  # identical pairs make a degenerate (zero-width) interval
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (a, b), statistic, paired=True, vectorized=False, n_resamples=RESAMPLES,
            confidence_level=1 - ALPHA, method="percentile", rng=np.random.default_rng(0),
        )  # fmt: skip
    low, high = result.confidence_interval
    point = statistic(a, b)
    return (point if math.isnan(low) else low), (point if math.isnan(high) else high)


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == b):
        return 1.0
    return float(stats.wilcoxon(b, a).pvalue)


def _too_few(metric: str, n: int) -> Comparison:
    return Comparison(
        metric, n, None, None, None, None, False, f"{metric}: too few pairs to tell (n={n}; need {MIN_PAIRS})."
    )


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def compare_times(pairs: list[tuple[float, float]], arm: str, baseline: str, metric: str = "run time") -> Comparison:
    """Relative change of the mean (arm vs baseline); negative is faster / cheaper."""
    if len(pairs) < MIN_PAIRS:
        return _too_few(metric, len(pairs))
    a, b = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
    if a.mean() == 0:
        what = "none recorded for either arm" if b.mean() == 0 else f"none recorded for {baseline}"
        return Comparison(
            metric,
            len(pairs),
            None,
            None,
            None,
            None,
            False,
            f"{metric}: {what} (a job run on a CPU bills no GPU time).",
        )

    def relative(x, y):
        return float(np.mean(y) / np.mean(x) - 1)

    change = relative(a, b)
    low, high = _bootstrap(a, b, relative)
    p = _wilcoxon(a, b)
    significant = p < ALPHA and (low > 0 or high < 0)
    ci = f"95% CI {low * 100:+.0f}% to {high * 100:+.0f}%; Wilcoxon {_p(p)}, n={len(pairs)}"
    if significant:
        faster = "faster" if metric == "run time" else "lower"
        slower = "slower" if metric == "run time" else "higher"
        word = faster if change < 0 else slower
        sentence = f"{metric}: {arm} is {abs(change) * 100:.0f}% {word} than {baseline} ({ci})."
    else:
        sentence = f"{metric}: {arm} and {baseline} are not significantly different ({change * 100:+.0f}%, {ci})."
    return Comparison(metric, len(pairs), change, low, high, p, significant, sentence)


def compare_distances(pairs: list[tuple[float, float]], arm: str, baseline: str) -> Comparison:
    metric = "edit distance"
    if len(pairs) < MIN_PAIRS:
        return _too_few(metric, len(pairs))
    a, b = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))

    def difference(x, y):
        return float(np.mean(y) - np.mean(x))

    change = difference(a, b)
    low, high = _bootstrap(a, b, difference)
    p = _wilcoxon(a, b)
    significant = p < ALPHA and (low > 0 or high < 0)
    ci = f"95% CI {low:+.3f} to {high:+.3f}; Wilcoxon {_p(p)}, n={len(pairs)}"
    if significant:
        word = "lower (better)" if change < 0 else "higher (worse)"
        sentence = f"{metric}: {arm}'s is {abs(change):.3f} {word} than {baseline}'s ({ci})."
    else:
        sentence = f"{metric}: not significantly different ({change:+.3f}, {ci})."
    return Comparison(metric, len(pairs), change, low, high, p, significant, sentence)


def compare_pass_rates(pairs: list[tuple[bool, bool]], arm: str, baseline: str) -> Comparison:
    metric = "pass rate"
    if len(pairs) < MIN_PAIRS:
        return _too_few(metric, len(pairs))
    a, b = (np.array(x, dtype=float) for x in zip(*pairs, strict=True))
    lost = int(np.sum((a == 1) & (b == 0)))  # baseline passed, arm failed
    gained = int(np.sum((a == 0) & (b == 1)))
    p = float(stats.binomtest(gained, lost + gained, 0.5).pvalue) if lost + gained else 1.0

    def difference(x, y):
        return float(np.mean(y) - np.mean(x))

    change = difference(a, b)
    low, high = _bootstrap(a, b, difference)
    significant = p < ALPHA
    rates = f"{arm} {b.mean():.0%} vs {baseline} {a.mean():.0%}"
    ci = f"95% CI {low * 100:+.0f} to {high * 100:+.0f} points; McNemar {_p(p)}, n={len(pairs)}"
    if significant:
        word = "higher" if change > 0 else "lower"
        sentence = f"{metric}: {word} for {arm}, {rates} ({change * 100:+.0f} points, {ci})."
    else:
        sentence = f"{metric}: not significantly different ({rates}, {ci})."
    return Comparison(metric, len(pairs), change, low, high, p, significant, sentence)
