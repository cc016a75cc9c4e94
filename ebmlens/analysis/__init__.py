"""What we measure about a model (Mirza et al. 2024, Sec. 3): energies of natural vs adversarial
inputs (:func:`energy_report`), their course over a training run (:func:`dynamics`), TRADES written
in energies (:func:`trades_energy_terms`) and WEAT weights (:func:`weat_weights`); energies in use:
out-of-distribution detection (:func:`ood_report`, constructed sets in :mod:`ebmlens.data.constructed`),
calibration (:func:`calibration_report`) and counterfactuals (:func:`counterfactuals`)."""

from ..data.constructed import resolve_ood
from .calibration import CalibrationReport, calibration_report, expected_calibration_error
from .counterfactual import Counterfactuals, counterfactuals
from .dynamics import DynamicsReport, dynamics
from .energies import energy_report
from .ood import OODReport, OODResult, ood_report
from .report import EnergyReport, Interval, KindSummary, Stats, bootstrap_mean_ci
from .trades import TradesTerms, trades_energy_terms, trades_terms_from_logits
from .weat import WeatTerms, weat_terms_from_logits, weat_weights

__all__ = ["energy_report", "EnergyReport", "KindSummary", "Stats", "Interval", "bootstrap_mean_ci",
           "dynamics", "DynamicsReport",
           "TradesTerms", "trades_energy_terms", "trades_terms_from_logits",
           "WeatTerms", "weat_terms_from_logits", "weat_weights",
           "ood_report", "OODReport", "OODResult", "resolve_ood",
           "calibration_report", "CalibrationReport", "expected_calibration_error",
           "counterfactuals", "Counterfactuals"]
