"""Paired comparisons of two roles on the same cases, and what a holdout of n cases can detect.

The method is Evan Miller's, "Adding Error Bars to Evals" (arXiv 2411.00640): compare two
models case by case (d_i = score_A,i - score_B,i), report the mean difference with its standard
error sd(d)/sqrt(n) and an interval, and size the test set by power. A case run several times
contributes one difference, of its mean scores: the standard error is then clustered by case.

``noninferior`` and ``superior`` read a one-sided lower bound, found by inverting a score test:
the smallest difference delta0 that the test of "the mean difference is delta0" does not reject,
with the variance of the differences taken about delta0 (as score tests take it, under the
hypothesis) rather than about their mean. Each kind of score gets its own test:

- pass/fail scores: Tango's score test for a difference of matched proportions (Tango 1998,
  Statistics in Medicine 17:891). The t bound is too generous when few cases are discordant
  (in simulation it passed 8% of gates whose true difference sat at -margin, at n=50 and a
  correlation of 0.7; the score bound passed 3.6%).
- graded scores: the statistic (mean - delta0) / sqrt(mean((d - delta0)^2) / n), against the
  Student t quantile raised by a Cornish-Fisher term when the differences' skewness is
  negative (the Edgeworth expansion of a studentized mean: Hall, "The Bootstrap and Edgeworth
  Expansion", 1992, section 2.6). Scores near the ceiling make the differences skewed to the
  left, and then the t bound passes too often: 5.2-5.5% of gates at -margin with a correlation
  of 0.7, from n=50 to n=200; this bound passes 4.8-5.2%, each within the simulation's error
  of 5% (``benchmarks/bench_gate_calibration.py --gates 20000``).
  A positive skewness never loosens the bound.

scipy gives the Student t quantiles (an interval that keeps its confidence at n = 20 as at
n = 500; the normal quantile would not), the normal quantile and distribution, and the binomial
distribution of McNemar's exact test on the discordant cases; numpy the paired bootstrap's
resamples and the skewness. Both are imported here only, and only when a pair is compared:
``import pytest_distill.plugin`` stays cheap. The distribution functions are scipy.special's,
the ones scipy.stats's ``t``, ``norm`` and ``binom`` call: importing scipy.stats builds the
docstrings of its hundreds of distributions, 0.6 s of every session that reaches the gate (an
offline replay of 600 items takes about 2 s in all), and scipy.optimize another 0.2 s for a
root found by bisection here. ``tests/test_stats.py`` checks each figure against scipy.stats,
scipy.optimize and ``scipy.stats.bootstrap`` on the same data.

Every interval stays inside the range a difference can take: [-1, 1] for scores in [0, 1]
(the t interval of a few cases would otherwise reach past it). Below ``MIN_PAIRED_CASES``
paired cases no interval is shown and no clause that reads one passes: at n = 2 the 95% t
interval is twelve standard deviations wide, and at n = 4 a Student quantile of 3.2 still
makes it say little. Five is also the fewest cases at which a one-sided 95% Tango bound of
cases that all agree (5 better, 0 worse) clears zero.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

BOOTSTRAP_RESAMPLES: Final = 2000
BOOTSTRAP_SEED: Final = 20241104  # fixed: the same data gives the same interval
POWER: Final = 0.8  # the share of runs a real drop should fail, as sample-size tables use
MIN_PAIRED_CASES: Final = 5  # fewer paired cases: "too few cases", and clauses fail closed


@dataclass(frozen=True, slots=True)
class Pair:
    """``a - b`` on the cases both roles ran."""

    a: str  # a label: ``finetuned`` or ``finetuned[meetings]``
    b: str
    n: int
    mean: float
    sd: float  # of the per-case differences
    se: float  # sd / sqrt(n); infinite below two cases
    low: float  # the two-sided interval at ``confidence``
    high: float
    lower_bound: float  # one-sided at ``confidence``: a score bound (Tango's when binary)
    confidence: float
    correlation: float | None  # of the two roles' scores; None when one is constant
    better: int  # cases where a scored higher than b
    worse: int
    binary: bool  # every score was 0 or 1
    exact_p: float | None  # binary: McNemar's exact test on the discordant cases, two-sided
    bootstrap: tuple[float, float] | None  # graded: the seeded paired bootstrap interval

    @property
    def label(self) -> str:
        return f"{self.a} - {self.b}"

    @property
    def too_few(self) -> bool:
        """Fewer than ``MIN_PAIRED_CASES`` cases: no interval is shown, no clause passes."""
        return self.n < MIN_PAIRED_CASES

    def line(self, errored: int = 0) -> str:
        """``finetuned - teacher: +0.100  95% CI [+0.031, +0.169]  n=100 paired  (12 better,
        2 worse)`` and the exact test or the bootstrap interval; ``too few cases (n=2 paired,
        at least 5 needed)`` below ``MIN_PAIRED_CASES``. ``errored``: cases left out because
        either role has no grade there."""
        left_out = f", {errored} errored" if errored else ""
        if self.too_few:
            return (
                f"{self.label}: too few cases (n={self.n} paired{left_out}, "
                f"at least {MIN_PAIRED_CASES} needed)"
            )
        text = (
            f"{self.label}: {signed(self.mean)}  {self.confidence:.0%} CI "
            f"[{signed(self.low)}, {signed(self.high)}]  n={self.n} paired{left_out}  "
            f"({self.better} better, {self.worse} worse)"
        )
        if self.exact_p is not None:
            text += f"  exact p={self.exact_p:.3g}"
        if self.bootstrap is not None:
            text += f"  bootstrap [{signed(self.bootstrap[0])}, {signed(self.bootstrap[1])}]"
        return text


def signed(value: float) -> str:
    """``+0.031``; a value that rounds to zero is ``+0.000``, never ``-0.000``."""
    text = f"{value:+.3f}"
    return "+0.000" if text == "-0.000" else text


def compare(
    a: str,
    b: str,
    a_scores: Sequence[float],
    b_scores: Sequence[float],
    confidence: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Pair:
    """Compare ``a`` and ``b`` on the same cases, in the same order (one score per case).
    ``resamples=0`` leaves out the bootstrap (it informs the reader, no clause reads it)."""
    if len(a_scores) != len(b_scores):
        raise ValueError(f"{a} has {len(a_scores)} scores, {b} {len(b_scores)}: not paired")
    d = [x - y for x, y in zip(a_scores, b_scores, strict=True)]
    n = len(d)
    mean = statistics.fmean(d) if d else 0.0
    sd = statistics.stdev(d) if n > 1 else math.inf
    se = sd / math.sqrt(n) if n > 1 else math.inf
    binary = all(s in (0, 1) for s in (*a_scores, *b_scores))
    better, worse = sum(x > 0 for x in d), sum(x < 0 for x in d)
    two_sided = t_quantile(1 - (1 - confidence) / 2, n) * se if n > 1 else math.inf
    if n < 2:
        lower = -math.inf
    elif binary:
        lower = score_lower_bound(better, worse, n, confidence)
    else:
        lower = graded_lower_bound(d, confidence)
    floor, ceiling = difference_range(a_scores, b_scores)
    return Pair(
        a=a,
        b=b,
        n=n,
        mean=mean,
        sd=sd,
        se=se,
        low=max(mean - two_sided, floor),
        high=min(mean + two_sided, ceiling),
        lower_bound=max(lower, floor),
        confidence=confidence,
        correlation=_correlation(a_scores, b_scores),
        better=better,
        worse=worse,
        binary=binary,
        exact_p=exact_test(better, worse) if binary else None,
        bootstrap=None if binary or n < 2 or not resamples else bootstrap(d, confidence, resamples),
    )


def difference_range(a_scores: Sequence[float], b_scores: Sequence[float]) -> tuple[float, float]:
    """Where a mean difference can lie: [-1, 1] when every score is in [0, 1] (as graders
    give them), else unbounded."""
    if all(0 <= s <= 1 for s in (*a_scores, *b_scores)):
        return -1.0, 1.0
    return -math.inf, math.inf


def t_quantile(p: float, n: int) -> float:
    """The Student t quantile with n - 1 degrees of freedom (a mean's interval from n cases);
    0 when the differences cannot vary (n below 2 is handled by the caller)."""
    from scipy import special

    return float(special.stdtrit(max(n - 1, 1), p))  # scipy.stats.t.ppf's own function


def normal_quantile(p: float) -> float:
    from scipy import special

    return float(special.ndtri(p))  # scipy.stats.norm.ppf's own function


def normal_cdf(x: float) -> float:
    from scipy import special

    return float(special.ndtr(x))  # scipy.stats.norm.cdf's own function


def exact_test(better: int, worse: int) -> float:
    """McNemar's exact test: under no difference each discordant case is a fair coin. The
    two-sided binomial test at p = 1/2, as ``scipy.stats.binomtest`` gives it: the binomial
    distribution is symmetric there, so its p-value is twice the smaller tail."""
    if better == worse:
        return 1.0
    from scipy import special

    return min(1.0, 2 * float(special.bdtr(min(better, worse), better + worse, 0.5)))


def bootstrap(
    d: Sequence[float], confidence: float, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean difference, resampling cases (so the pairs
    stay together), with a fixed seed: ``scipy.stats.bootstrap(..., method="percentile")``'s
    resamples (n indices per resample, drawn by the same generator) and percentiles."""
    import numpy as np

    if statistics.pstdev(d) == 0:
        return d[0], d[0]  # every resample has the same mean
    x = np.asarray(d, dtype=float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = x[rng.integers(0, len(x), (resamples, len(x)))].mean(axis=-1)
    alpha = (1 - confidence) / 2
    return float(np.percentile(means, alpha * 100)), float(np.percentile(means, (1 - alpha) * 100))


def skewness(d: Sequence[float]) -> float:
    """The sample skewness with the small-sample correction, ``scipy.stats.skew(d,
    bias=False)``: sqrt(n (n - 1)) / (n - 2) * m3 / m2^1.5 (n > 2, the differences not all
    equal)."""
    import numpy as np

    x = np.asarray(d, dtype=float)
    deviation = x - x.mean()
    m2 = float(np.mean(deviation**2))
    m3 = float(np.mean(deviation**2 * deviation))
    n = len(x)
    return float(math.sqrt((n - 1) * n) / (n - 2) * m3 / m2**1.5)


def score_lower_bound(better: int, worse: int, n: int, confidence: float) -> float:
    """Tango's one-sided lower confidence bound of p(a passed, b failed) - p(b passed, a
    failed): the smallest difference delta0 that his score test does not reject. The statistic
    falls as delta0 rises, so the root is found by bisection, to 1e-12."""
    z = normal_quantile(confidence)
    observed = (better - worse) / n

    def excess(delta: float) -> float:
        return _score_z(better, worse, n, delta) - z

    low = -1 + 1e-9
    if observed <= low or excess(low) <= 0:
        return -1.0
    high = observed  # excess(observed) = -z < 0
    while high - low > 1e-12:
        middle = (low + high) / 2
        if excess(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def graded_lower_bound(d: Sequence[float], confidence: float) -> float:
    """The smallest delta0 at which (mean - delta0) / sqrt(mean((d - delta0)^2) / n) stays
    at or under q, the one-sided t quantile corrected for a negative skewness of d. With
    x = mean - delta0 the statistic is x / sqrt((s2 + x^2) / n), s2 the variance about the
    mean, which equals q at x = q sqrt(s2 / (n - q^2)); when n <= q^2 it never reaches q."""
    n, mean = len(d), statistics.fmean(d)
    s2 = statistics.pvariance(d, mean)
    if s2 == 0:
        return mean  # every case differs by the same amount
    q = t_quantile(confidence, n)
    if n > 2:
        skew = skewness(d)
        z = normal_quantile(confidence)
        q -= min(skew, 0.0) * (2 * z * z + 1) / (6 * math.sqrt(n))
    if n <= q * q:
        return -math.inf
    return mean - q * math.sqrt(s2 / (n - q * q))


def _score_z(better: int, worse: int, n: int, delta: float) -> float:
    """Tango's score statistic for H0: p10 - p01 = delta; p01 is its maximum likelihood
    estimate under H0, the root in range of 2n x^2 - B x - n01 delta (1 - delta) = 0."""
    same = n - better - worse
    b = better * (1 - delta) + worse * (1 - 3 * delta) - 2 * same * delta
    root = math.sqrt(max(b * b + 8 * n * worse * delta * (1 - delta), 0.0))
    p01 = (b + root) / (4 * n)
    if not (p01 + delta >= -1e-12 and 1 - 2 * p01 - delta >= -1e-12):
        p01 = (b - root) / (4 * n)
    variance = max((2 * p01 + delta * (1 - delta)) / n, 1e-300)
    return ((better - worse) / n - delta) / math.sqrt(variance)


def _correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:  # fewer than two cases, or a constant role
        return None


@dataclass(frozen=True, slots=True)
class Power:
    """What ``noninferior(a, b, margin)`` on this many cases can tell apart."""

    pair: Pair
    margin: float
    drop_failed_80: float  # the smallest true drop that fails the clause 80% of the time
    pass_if_equal: float  # how often a model exactly as good as b passes
    cases_needed: int | None  # when pass_if_equal is under 80%: cases that would reach it

    def line(self) -> str:
        p = self.pair
        drop = self.drop_failed_80
        change = (
            f"a true drop of {drop:.3f} or more"
            if drop >= 0
            else f"even a true gain of {-drop:.3f}"
        )
        clause = f"noninferior({p.a}, {p.b}, margin={self.margin:g})"
        text = (
            f"power: sd(d)={p.sd:.3f}, n={p.n}: {change} fails {clause} {POWER:.0%} of the "
            f"time; a model as good as {p.b} passes {self.pass_if_equal:.0%} of the time"
        )
        if self.cases_needed is not None:
            text += (
                f"; too few cases for margin {self.margin:g}: about {self.cases_needed} "
                f"holdout cases would make that {POWER:.0%}"
            )
        return text


def power(pair: Pair, margin: float) -> Power:
    """The clause fails when mean(d) <= -margin + q*se (q: the one-sided t quantile, the
    approximation sample-size tables use; the clause's score bound is within a few percent of
    it); with a true difference delta, mean(d) is about normal around delta with sd se."""
    q = t_quantile(pair.confidence, pair.n) if pair.n > 1 else math.inf
    se, z = pair.se, normal_quantile(POWER)
    if not math.isfinite(se) or se == 0:
        equal = 1.0 if se == 0 and margin > 0 else 0.0
        drop = margin if se == 0 else math.inf
        needed = None if equal >= POWER else _cases_needed(pair, margin)
        return Power(pair, margin, drop, equal, needed)
    equal = normal_cdf(margin / se - q)
    needed = None if equal >= POWER else _cases_needed(pair, margin)
    return Power(pair, margin, margin - (q - z) * se, equal, needed)


def _cases_needed(pair: Pair, margin: float) -> int | None:
    """The smallest n at which a model as good as b passes 80% of the time, at this sd."""
    if margin <= 0 or not math.isfinite(pair.sd):
        return None
    sd = max(pair.sd, 1e-9)
    z = normal_quantile(POWER)
    n = max(2, math.ceil(((normal_quantile(pair.confidence) + z) * sd / margin) ** 2))
    while (t_quantile(pair.confidence, n) + z) * sd / math.sqrt(n) > margin:
        n += 1
    return n
