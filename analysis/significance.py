"""
Which differences between a study's variants exceed seed noise: the pairs it compares, Welch's t interval and test,
and Holm's correction over a table of comparisons.
"""

import math
import warnings

import numpy as np

ALPHA = 0.05  # a corrected p-value below it: a difference beyond seed noise


def welch(a, b, level=0.95):
    """mean(a) − mean(b), its confidence interval (Welch–Satterthwaite t interval) and Welch's t-test p-value;
    the interval and p-value are NaN where undefined (a single seed, or no variance at all)."""
    from scipy import stats as scipy_stats  # here: its second of import time would slow every run's --evaluate

    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.ttest_ind(a, b, equal_var=False)
        ci = result.confidence_interval(level)
    return diff, float(ci.low), float(ci.high), float(result.pvalue)


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values, in the given order: the k-th smallest of m becomes
    max over j ≤ k of min(1, (m − j + 1)·p_(j)). NaN (untestable) entries stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    testable = np.flatnonzero(np.isfinite(p))
    adjusted, running = np.full(len(p), math.nan), 0.0
    for rank, i in enumerate(testable[np.argsort(p[testable], kind="stable")]):
        running = max(running, min(1.0, (len(testable) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def comparisons(variants):
    """The study's two sets of (variant, reference) pairs. Against the baseline: every variant against the first
    one's attn_norm and gate under the same optimizer. The optimizer's effect: every variant under a later
    optimizer against itself under the first ([] with one optimizer)."""
    by_settings = {(v.norm, v.gate, v.optimizer): v for v in variants}
    first = variants[0]
    against_baseline = [(v, by_settings[first.norm, first.gate, v.optimizer]) for v in variants
                        if (v.norm, v.gate) != (first.norm, first.gate)]
    optimizer_effect = [(v, by_settings[v.norm, v.gate, first.optimizer]) for v in variants
                        if v.optimizer != first.optimizer]
    return against_baseline, optimizer_effect
