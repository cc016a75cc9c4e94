"""Adversarial training: objectives (frozen dataclasses over pure loss functions) and a small trainer."""

from . import objectives
from .objectives import DAT, PGDAT, AttackConfig, RobustJEM, Standard, Trades, WeatAdv, WeatNat
from .trainer import TrainConfig, TrainResult, evaluate_accuracy, train

__all__ = ["objectives", "AttackConfig", "TrainConfig", "TrainResult", "train", "evaluate_accuracy",
           "Standard", "PGDAT", "Trades", "WeatAdv", "WeatNat", "RobustJEM", "DAT"]
