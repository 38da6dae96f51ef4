"""Each figure of a paired comparison, checked against scipy.stats on the same data."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sp

from pytest_distill.verdict.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap,
    compare,
    exact_test,
    power,
    skewness,
)


def binary_pair(n: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    a, b = [], []
    for _ in range(n):
        base = rng.random() < 0.7
        a.append(float(base if rng.random() < 0.8 else not base))
        b.append(float(base if rng.random() < 0.8 else rng.random() < 0.5))
    return a, b


def graded_pair(n: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    a, b = [], []
    for _ in range(n):
        z = rng.gauss(0, 1)
        a.append(min(1.0, max(0.0, 0.6 + 0.2 * z + rng.gauss(0, 0.15))))
        b.append(min(1.0, max(0.0, 0.55 + 0.2 * z + rng.gauss(0, 0.15))))
    return a, b


@pytest.mark.parametrize("make", [binary_pair, graded_pair])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_interval_se_and_correlation_match_scipy(make, confidence):
    a, b = make(120, 1)
    pair = compare("finetuned", "teacher", a, b, confidence)
    d = np.subtract(a, b)
    t = sp.ttest_rel(a, b)
    low, high = t.confidence_interval(confidence)
    assert pair.n == 120
    assert pair.mean == pytest.approx(d.mean())
    assert pair.se == pytest.approx(sp.sem(d))
    assert (pair.low, pair.high) == pytest.approx((low, high))
    # the one-sided bound is a score bound for both kinds: the tests below
    assert pair.correlation == pytest.approx(sp.pearsonr(a, b).statistic)
    assert pair.better == int((d > 0).sum()) and pair.worse == int((d < 0).sum())


def test_binary_scores_get_mcnemars_exact_test():
    a, b = binary_pair(100, 2)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    assert pair.binary and pair.bootstrap is None
    expected = sp.binomtest(pair.better, pair.better + pair.worse, 0.5).pvalue
    assert pair.exact_p == pytest.approx(expected)
    # McNemar's exact test is the binomial test on the discordant cases: check the counts
    assert pair.better == sum(x == 1 and y == 0 for x, y in zip(a, b, strict=True))
    assert pair.worse == sum(x == 0 and y == 1 for x, y in zip(a, b, strict=True))


def tango_z(better: int, worse: int, n: int, delta: float) -> float:
    """The score statistic, with p01's restricted estimate found by maximising the likelihood
    numerically (not by the closed form the module uses)."""
    from scipy import optimize

    same = n - better - worse

    def minus_loglik(p01: float) -> float:
        p10 = p01 + delta
        return -(better * np.log(p10) + worse * np.log(p01) + same * np.log(1 - p10 - p01))

    low, high = max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12
    p01 = optimize.minimize_scalar(
        minus_loglik, bounds=(low, high), method="bounded", options={"xatol": 1e-12}
    ).x
    return ((better - worse) / n - delta) / math.sqrt((2 * p01 + delta * (1 - delta)) / n)


@pytest.mark.parametrize("seed", [2, 6, 9])
def test_binary_lower_bound_is_tangos_score_bound(seed):
    a, b = binary_pair(80, seed)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    # at the bound the score test sits exactly at its critical value, and above it rejects
    assert tango_z(pair.better, pair.worse, 80, pair.lower_bound) == pytest.approx(
        sp.norm.ppf(0.95), abs=1e-4
    )
    assert tango_z(pair.better, pair.worse, 80, pair.lower_bound - 0.01) > sp.norm.ppf(0.95)
    assert pair.lower_bound < pair.mean


def skew_corrected_t(d: np.ndarray, confidence: float) -> float:
    """The one-sided t quantile less the Cornish-Fisher term of a negative skewness."""
    z = sp.norm.ppf(confidence)
    skew = min(sp.skew(d, bias=False), 0.0)
    return sp.t.ppf(confidence, len(d) - 1) - skew * (2 * z**2 + 1) / (6 * math.sqrt(len(d)))


def graded_score_z(d: np.ndarray, delta: float) -> float:
    return (d.mean() - delta) / math.sqrt(np.mean((d - delta) ** 2) / len(d))


@pytest.mark.parametrize("seed", [3, 8])
@pytest.mark.parametrize("left", [False, True])
def test_graded_lower_bound_inverts_the_score_test_at_the_skew_corrected_quantile(seed, left):
    a, b = graded_pair(90, seed)
    # one role's scores piled at 1.0, with a few far lower: a long tail on one side
    if left:
        a = [min(1.0, x + 0.3) if i % 3 else x - 0.4 for i, x in enumerate(a)]
    else:
        b = [min(1.0, x + 0.3) if i % 3 else x - 0.4 for i, x in enumerate(b)]
    d = np.subtract(a, b)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    q = skew_corrected_t(d, 0.95)
    assert bool(sp.skew(d, bias=False) < 0) is left
    if left:
        assert q > sp.t.ppf(0.95, 89) + 0.01
    else:  # a positive skewness never loosens the bound
        assert q == pytest.approx(sp.t.ppf(0.95, 89))
    # found by root-finding on the statistic itself, not by the module's closed form
    from scipy import optimize

    root = optimize.brentq(lambda delta: graded_score_z(d, delta) - q, -1, d.mean())
    assert pair.lower_bound == pytest.approx(root, abs=1e-9)
    assert graded_score_z(d, pair.lower_bound - 0.01) > q
    # below the t bound, about where it would sit
    t_bound = sp.ttest_rel(a, b, alternative="greater").confidence_interval(0.95).low
    assert t_bound - 0.02 < pair.lower_bound < t_bound


def test_graded_lower_bound_of_identical_differences_is_that_difference():
    pair = compare("finetuned", "teacher", [0.9, 0.7, 0.5], [0.8, 0.6, 0.4], 0.95)
    assert pair.lower_bound == pytest.approx(0.1)


def test_graded_scores_get_a_seeded_paired_bootstrap_close_to_scipys():
    a, b = graded_pair(200, 3)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    assert not pair.binary and pair.exact_p is None and pair.bootstrap is not None
    assert compare("finetuned", "teacher", a, b, 0.95).bootstrap == pair.bootstrap  # seeded
    reference = sp.bootstrap(
        (np.asarray(a), np.asarray(b)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        n_resamples=9999,
        method="percentile",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert pair.bootstrap[0] == pytest.approx(reference.low, abs=0.004)
    assert pair.bootstrap[1] == pytest.approx(reference.high, abs=0.004)


def test_summary_line_shows_difference_interval_n_and_discordant_counts():
    a = [1.0] * 12 + [0.0] * 2 + [1.0] * 80 + [0.0] * 6
    b = [0.0] * 12 + [1.0] * 2 + [1.0] * 80 + [0.0] * 6
    pair = compare("finetuned", "teacher", a, b, 0.95)
    low, high = sp.ttest_rel(a, b).confidence_interval(0.95)
    p = sp.binomtest(12, 14).pvalue
    assert pair.line() == (
        f"finetuned - teacher: +0.100  95% CI [{low:+.3f}, {high:+.3f}]  n=100 paired  "
        f"(12 better, 2 worse)  exact p={p:.3g}"
    )


def exact_pass_rate(sd: float, n: int, margin: float, confidence: float) -> float:
    """P(mean - t*s/sqrt(n) > -margin) when the true difference is 0: a noncentral t."""
    q = sp.t.ppf(confidence, n - 1)
    return float(sp.nct.sf(q, n - 1, margin * math.sqrt(n) / sd))


def test_power_matches_the_noncentral_t():
    a, b = graded_pair(100, 4)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    found = power(pair, 0.05)
    assert found.pass_if_equal == pytest.approx(exact_pass_rate(pair.sd, 100, 0.05, 0.95), abs=0.01)
    # the stated drop fails the clause 80% of the time: P(pass | delta = -drop) = 20%
    shifted = 0.05 - found.drop_failed_80
    q = sp.t.ppf(0.95, 99)
    passes = sp.nct.sf(q, 99, shifted * 10 / pair.sd)
    assert passes == pytest.approx(0.2, abs=0.01)


def test_power_says_how_many_cases_a_small_holdout_would_need():
    a, b = binary_pair(40, 5)
    pair = compare("finetuned", "teacher", a, b, 0.95)
    found = power(pair, 0.05)
    assert found.cases_needed is not None and found.cases_needed > 40
    needed = found.cases_needed
    assert exact_pass_rate(pair.sd, needed, 0.05, 0.95) == pytest.approx(0.8, abs=0.01)
    assert exact_pass_rate(pair.sd, needed - 5, 0.05, 0.95) < 0.8
    assert f"about {needed} holdout cases" in found.line()


def test_fewer_than_two_cases_give_the_whole_range_and_too_few():
    pair = compare("finetuned", "teacher", [1.0], [0.0], 0.95)
    assert (pair.low, pair.high, pair.lower_bound) == (-1.0, 1.0, -1.0)
    assert pair.too_few
    assert pair.line() == "finetuned - teacher: too few cases (n=1 paired, at least 5 needed)"


def test_an_interval_never_leaves_the_range_of_a_difference():
    pair = compare("finetuned", "teacher", [1.0, 0.0], [0.0, 0.5], 0.95)
    assert pair.n == 2 and pair.too_few
    assert -1.0 <= pair.low <= pair.mean <= pair.high <= 1.0
    assert (pair.low, pair.high) == (-1.0, 1.0)  # the t interval alone is [-5.853, +6.853]
    assert pair.lower_bound >= -1.0
    wide = compare("a", "b", [1.0, 0.9, 0.0, 1.0, 0.2], [0.0, 0.1, 1.0, 0.0, 0.9], 0.95)
    assert not wide.too_few and wide.low >= -1.0 and wide.high <= 1.0


def test_scores_outside_zero_one_are_not_clipped():
    pair = compare("a", "b", [3.0, 0.0], [0.0, 2.0], 0.95)
    assert pair.low < -1.0 and pair.high > 1.0


def test_the_exact_test_is_scipys_binomial_test_at_one_half():
    for better in range(40):
        for worse in range(40):
            if better + worse:
                expected = sp.binomtest(better, better + worse, 0.5).pvalue
                assert exact_test(better, worse) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [3, 7, 50])
def test_skewness_is_scipys_unbiased_skew(n):
    d = np.random.default_rng(n).gamma(2.0, size=n) - 1.0
    assert skewness(list(d)) == pytest.approx(sp.skew(d, bias=False), rel=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_the_bootstrap_is_scipys_percentile_bootstrap_with_the_same_seed(confidence):
    a, b = graded_pair(60, 11)
    d = np.subtract(a, b)
    reference = sp.bootstrap(
        (d,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    ).confidence_interval
    assert bootstrap(list(d), confidence) == pytest.approx(
        (reference.low, reference.high), rel=1e-12
    )


def test_a_comparison_imports_neither_scipy_stats_nor_scipy_optimize():
    """scipy.stats's import costs a session about 0.6 s, scipy.optimize's 0.2 s: the gate uses
    scipy.special's functions, which those modules call themselves."""
    code = (
        "import sys\n"
        "from pytest_distill.verdict.stats import compare, power\n"
        "graded = compare('a', 'b', [0.9, 0.5, 0.7, 0.2, 1.0, 0.4], [0.8, 0.6, 0.1, 0.3, 0.9, 0.2], 0.95)\n"
        "binary = compare('a', 'b', [1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0], 0.95)\n"
        "power(graded, 0.05), power(binary, 0.05)\n"
        "assert graded.bootstrap and binary.exact_p\n"
        "print(sorted(m for m in sys.modules if m.startswith(('scipy.stats', 'scipy.optimize'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
