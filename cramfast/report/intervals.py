"""The 95% intervals of the report, computed exactly without scipy.

- ``mean_interval``: of the mean of the per-text accuracies at a length, Student's t with n - 1
  degrees of freedom. A length is decided over few passages (8 or 16 on a CPU), where the normal
  approximation's 1.96 is too narrow (t at 7 degrees of freedom is 2.36). It is zero wide when
  every text has the same accuracy, so it says nothing about a length where all are lossless.
- ``binomial_interval``: of the fraction of texts a length holds losslessly, Clopper-Pearson
  (exact, from the binomial distribution itself). 16 of 16 lossless gives 0.79-1.00: the share
  of such passages one vector holds is at least 0.79, the statement the mean's interval cannot
  make there.
"""
from __future__ import annotations

import math

LEVEL = 0.95


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom, in closed form
    (Abramowitz and Stegun 26.7.3-4): with theta = atan(t / sqrt(df)),
    even df: sin(theta) * sum_j c_j cos(theta)^(2j), c_0 = 1, c_j = c_(j-1) (2j - 1) / (2j);
    odd df: (2 / pi) (theta + sin(theta) * sum_j d_j cos(theta)^(2j + 1)),
    d_0 = 1, d_j = d_(j-1) (2j) / (2j + 1), no sum at df = 1; j runs to (df - 2) // 2."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= (2 * j - 1) / (2 * j) * c * c
            total += term
        return min(1.0, s * total)
    term, total = c, c if df > 1 else 0.0
    for j in range(1, (df - 1) // 2):
        term *= (2 * j) / (2 * j + 1) * c * c
        total += term
    return min(1.0, 2 / math.pi * (theta + s * total))


def solve_increasing(f, target: float, low: float, high: float) -> float:
    """The x in [low, high] where the increasing function f reaches target (f(low) < target
    <= f(high)), by bisection down to adjacent floats: the midpoint then equals an end."""
    while True:
        mid = (low + high) / 2
        if mid in (low, high):
            return mid
        if f(mid) < target:
            low = mid
        else:
            high = mid


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The t with P(|T| <= t) = level (the half-width factor of a two-sided interval), by
    bisection on t_two_sided_probability."""
    high = 2.0
    while t_two_sided_probability(high, df) < level:
        high *= 2
    return solve_increasing(lambda t: t_two_sided_probability(t, df), level, 0.0, high)


def mean_interval(values, level: float = LEVEL):
    """(low, high): Student's t interval of the mean of ``values`` (each in [0, 1], the texts'
    accuracies), mean +- t(level, n - 1) * sd / sqrt(n), sd with n - 1, clipped to [0, 1].
    None below 2 values; zero wide when they are all equal."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def _binomial_tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), 0 < p < 1, summed in logs (no overflow at large n)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * log_p + (n - i) * log_q) for i in range(k, n + 1)))


def binomial_interval(k: int, n: int, level: float = LEVEL):
    """(low, high): the Clopper-Pearson interval of a binomial fraction, k successes (texts
    lossless) of n. low solves P(X >= k | p) = alpha / 2 (0 at k = 0), high solves
    P(X <= k | p) = alpha / 2 (1 at k = n), alpha = 1 - level. None at n = 0."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, not k = {k}, n = {n}")
    if n == 0:
        return None
    alpha = 1 - level
    low = 0.0 if k == 0 else solve_increasing(lambda p: _binomial_tail_at_least(k, n, p),
                                              alpha / 2, 0.0, 1.0)
    # P(X <= k | p) = 1 - P(X >= k + 1 | p) falls as p grows: solve P(X >= k + 1) = 1 - alpha/2
    high = 1.0 if k == n else solve_increasing(
        lambda p: _binomial_tail_at_least(k + 1, n, p), 1 - alpha / 2, 0.0, 1.0)
    return low, high
