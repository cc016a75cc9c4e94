"""What we measure about a model: energies of natural vs adversarial inputs, TRADES in energies,
WEAT weights."""

from .trades import TradesTerms, trades_energy_terms, trades_terms_from_logits
from .weat import WeatTerms, weat_terms_from_logits, weat_weights

__all__ = ["TradesTerms", "trades_energy_terms", "trades_terms_from_logits",
           "WeatTerms", "weat_terms_from_logits", "weat_weights"]
