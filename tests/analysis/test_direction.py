"""Directions of the energy gaps on the two shipped models (fixed weights, never retrained here).

What these tests assert is what we measured (docs/howto-energy-analysis.md has the n=1000 numbers):

* standard model (ebmlens:cifar10-standard-small), Linf eps 8/255: untargeted PGD lowers mean E(x)
  the most, targeted PGD lowers it less:  E(untargeted) < E(targeted) < E(natural);
  L2 eps 0.5: targeted PGD raises mean E(x):  E(natural) < E(targeted).
* L2-robust model (ebmlens:cifar10-l2-small), L2 eps 0.5: both attacks raise mean E(x), targeted more:
  E(natural) < E(untargeted) < E(targeted).

Margins: every ordering must hold for the whole 99% percentile-bootstrap interval of the paired
per-image difference, not just for the means. n = 200 strided test images, 5 PGD steps (10 for the standard model
under Linf; the docs' runs use n = 1000 and 10 steps; the directions are the same).
"""

from __future__ import annotations

import pytest

from ebmlens.analysis import bootstrap_mean_ci, energy_report

N, STEPS, LEVEL = 200, 5, 0.99


def _less(rep, a: str, b: str) -> None:
    """Mean E(x) of kind ``a`` is below that of ``b``, with the paired interval of (a - b) below 0."""
    iv = bootstrap_mean_ci(rep.values[a]["energy"] - rep.values[b]["energy"], level=LEVEL)
    assert iv.high < 0, (f"expected mean E(x) of {a} < {b}; E({a}) - E({b}) = {iv} "
                         f"(means {rep.mean_energy(a):.3f} vs {rep.mean_energy(b):.3f})")


@pytest.fixture(scope="module")
def standard_linf(standard_model, cifar_test):
    # 10 steps, as the docs' runs: with 5, targeted Linf PGD has not yet moved far enough for the whole 99%
    # interval at n = 200 to clear zero on every seed of the target draw (it did on the old noise streams)
    return energy_report(standard_model, cifar_test, ["pgd", "pgd-targeted"], threat_model="Linf", eps=8 / 255,
                         n=N, steps=10)


def test_standard_model_linf_attacks_lower_energy(standard_linf):
    assert standard_linf["natural"].accuracy > 0.7          # it is a working classifier ...
    assert standard_linf["pgd"].accuracy < 0.05             # ... with no robustness
    _less(standard_linf, "pgd", "pgd-targeted")
    _less(standard_linf, "pgd-targeted", "natural")
    assert standard_linf["pgd"].gap_energy.low > 0           # the report's own interval agrees


def test_standard_model_l2_targeted_raises_energy(standard_model, cifar_test):
    rep = energy_report(standard_model, cifar_test, ["pgd-targeted"], threat_model="L2", eps=0.5, n=N, steps=STEPS)
    _less(rep, "natural", "pgd-targeted")
    assert rep["pgd-targeted"].gap_energy.high < 0


def test_robust_model_l2_attacks_raise_energy(robust_model, cifar_test):
    rep = energy_report(robust_model, cifar_test, ["pgd", "pgd-targeted"], threat_model="L2", eps=0.5,
                        n=N, steps=STEPS)
    assert rep["pgd"].accuracy > 0.3                       # robust: PGD leaves many images correct
    _less(rep, "natural", "pgd")
    _less(rep, "pgd", "pgd-targeted")
