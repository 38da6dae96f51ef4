"""Is ``noninferior(finetuned, teacher, margin=m)`` calibrated, and how much can it detect?

Simulates paired scores of two models on n cases, with a correlation between the models'
scores like real models' (0.3-0.7), and runs the gate's own paired comparison
(:func:`pytest_distill.verdict.stats.compare`, the one-sided lower bound at confidence 0.95:
Tango's score bound for pass/fail scores; for graded scores the score bound at the t quantile
corrected for a negative skewness)
2,000 times per setting:

- with the true difference exactly at -margin, the clause should pass at most alpha = 5% of
  the time (the rate is printed with its own 95% Wilson interval, and beside it the rate of a
  plain Student t bound on the same data, which the clause does not use);
- with a true difference of 0, the share that passes is the clause's power.

Two kinds of score: binary (pass/fail, correlated through the joint probabilities of the four
outcomes) and graded (in [0, 1]: a normal CDF of correlated latent normals, whose means are
known exactly).

    python benchmarks/bench_gate_calibration.py [--gates 2000] [--margin 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_distill.verdict.stats import compare

Draw = Callable[[np.random.Generator, int, float], tuple[np.ndarray, np.ndarray]]
TEACHER_PASS = 0.8  # the teacher's pass rate (binary) or mean score (graded)


def binary(correlation: float) -> Draw:
    def draw(rng: np.random.Generator, n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
        pb, pa = TEACHER_PASS, TEACHER_PASS + delta
        both = pa * pb + correlation * math.sqrt(pa * (1 - pa) * pb * (1 - pb))
        cells = [both, pa - both, pb - both, 1 - pa - pb + both]  # 11, 10, 01, 00
        outcome = rng.choice(4, size=n, p=cells)
        a = np.isin(outcome, (0, 1)).astype(float)
        b = np.isin(outcome, (0, 2)).astype(float)
        return a, b

    return draw


def graded(correlation: float, spread: float = 1.0) -> Draw:
    """score = Phi(mu + spread * z); E[score] = Phi(mu / sqrt(1 + spread^2)), exactly."""

    def mu(mean: float) -> float:
        return float(sp.norm.ppf(mean)) * math.sqrt(1 + spread**2)

    def draw(rng: np.random.Generator, n: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
        z = rng.multivariate_normal([0, 0], [[1, correlation], [correlation, 1]], size=n)
        a = sp.norm.cdf(mu(TEACHER_PASS + delta) + spread * z[:, 0])
        b = sp.norm.cdf(mu(TEACHER_PASS) + spread * z[:, 1])
        return a, b

    return draw


def pass_rate(
    draw: Draw, n: int, delta: float, margin: float, gates: int, seed: int
) -> tuple[float, float, float]:
    """The share of simulated gates whose noninferior clause passed, the share a plain Student
    t bound would have passed (for comparison), and the mean correlation."""
    rng = np.random.default_rng(seed)
    passed, t_passed, correlations = 0, 0, []
    t = float(sp.t.ppf(0.95, n - 1))
    for _ in range(gates):
        a, b = draw(rng, n, delta)
        # resamples=0: the bootstrap interval is for reading; no clause uses it
        pair = compare("finetuned", "teacher", a.tolist(), b.tolist(), 0.95, resamples=0)
        passed += pair.lower_bound > -margin
        t_passed += pair.mean - t * pair.se > -margin
        if pair.correlation is not None:
            correlations.append(pair.correlation)
    return passed / gates, t_passed / gates, statistics.fmean(correlations)


def wilson(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    result = sp.binomtest(round(rate * n), n).proportion_ci(confidence, method="wilson")
    return result.low, result.high


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gates", type=int, default=2000)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kinds = {
        "binary, corr 0.3": binary(0.3),
        "binary, corr 0.7": binary(0.7),
        "graded, corr 0.3": graded(0.3),
        "graded, corr 0.7": graded(0.7),
    }
    sizes = (50, 100, 200, 500)
    started = time.perf_counter()
    print(
        f"noninferior(finetuned, teacher, margin={args.margin}), confidence 0.95, "
        f"{args.gates} simulated gates per cell; teacher at {TEACHER_PASS}"
    )
    print("\nwith the true difference at -margin (should pass at most 5%):")
    for name, draw in kinds.items():
        for n in sizes:
            rate, t_rate, corr = pass_rate(
                draw, n, -args.margin, args.margin, args.gates, args.seed + n
            )
            low, high = wilson(rate, args.gates)
            print(
                f"  {name:17} n={n:3}  observed corr {corr:.2f}  passed {rate:6.1%}  "
                f"95% CI [{low:.1%}, {high:.1%}]   (a t bound: {t_rate:.1%})"
            )
    print("\nwith a true difference of 0 (power):")
    for name, draw in kinds.items():
        cells = []
        for n in sizes:
            rate, _, _ = pass_rate(draw, n, 0.0, args.margin, args.gates, args.seed + 7 * n)
            cells.append(f"n={n}: {rate:5.1%}")
        print(f"  {name:17} " + "  ".join(cells))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
