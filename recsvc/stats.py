"""95% intervals for an experiment's online figures, with the customer as the unit.

Customers are split between arms, so they, not impressions, are the independent units: one
customer's impressions tend to be clicked (or not) alike. A figure is a ratio over an arm's
customers, sum(m_i) / sum(n_i) (n_i: customer i's impressions; m_i: their clicked
impressions, converted impressions or attributed revenue), and its variance is the delta
method's over customers, from six running sums (``UnitSums``) that the store keeps.

- A proportion (click-through, conversion rate) gets a Wilson score interval at its effective
  sample size: the impressions divided by the design effect (the delta variance over the
  binomial one), at most the impressions. With one impression per customer it is the plain
  Wilson interval.
- Revenue per impression gets mean +- 1.96 standard errors.
- A difference between two arms: for proportions Newcombe's hybrid score interval from the
  two Wilson intervals, for revenue the normal one; the arms are independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class UnitSums:
    """Running sums over an arm's customers for one ratio sum(m) / sum(n)."""

    customers: float  # customers with at least one impression
    n: float  # sum of n_i
    n_sq: float  # sum of n_i^2
    m: float  # sum of m_i
    m_sq: float  # sum of m_i^2
    n_m: float  # sum of n_i m_i


@dataclass(frozen=True)
class Interval:
    value: float | None  # None: no data
    low: float | None
    high: float | None
    variance: float | None = None  # of ``value``; None: too few customers to tell


NO_DATA = Interval(None, None, None)


def ratio_variance(sums: UnitSums) -> float | None:
    """The delta-method variance of sum(m) / sum(n) over customers; None under two."""
    k = sums.customers
    if k < 2 or sums.n <= 0:
        return None
    ratio = sums.m / sums.n
    mean_n = sums.n / k
    var_n = (sums.n_sq - sums.n**2 / k) / (k - 1)
    var_m = (sums.m_sq - sums.m**2 / k) / (k - 1)
    cov = (sums.n_m - sums.n * sums.m / k) / (k - 1)
    return max((var_m - 2 * ratio * cov + ratio**2 * var_n) / (k * mean_n**2), 0.0)


def wilson(p: float, n: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def proportion(sums: UnitSums) -> Interval:
    if sums.n <= 0:
        return NO_DATA
    p = sums.m / sums.n
    variance = ratio_variance(sums)
    effective = sums.n
    if variance is not None and variance > 0:
        effective = min(sums.n, p * (1 - p) / variance)
    low, high = wilson(p, max(effective, 1.0))
    return Interval(p, low, high, variance)


def mean(sums: UnitSums) -> Interval:
    if sums.n <= 0:
        return NO_DATA
    value = sums.m / sums.n
    variance = ratio_variance(sums)
    if variance is None:
        return Interval(value, None, None)
    half = Z95 * math.sqrt(variance)
    return Interval(value, value - half, value + half, variance)


def proportion_difference(base: Interval, other: Interval) -> Interval:
    """``other`` less ``base`` (Newcombe's hybrid score interval)."""
    p1, l1, u1 = base.value, base.low, base.high
    p2, l2, u2 = other.value, other.low, other.high
    if p1 is None or p2 is None or l1 is None or u1 is None or l2 is None or u2 is None:
        return NO_DATA
    difference = p2 - p1
    low = difference - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = difference + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return Interval(difference, low, high)


def mean_difference(base: Interval, other: Interval) -> Interval:
    """``other`` less ``base``, normal approximation."""
    if base.value is None or other.value is None:
        return NO_DATA
    difference = other.value - base.value
    if base.variance is None or other.variance is None:
        return Interval(difference, None, None)
    half = Z95 * math.sqrt(base.variance + other.variance)
    return Interval(difference, difference - half, difference + half)
