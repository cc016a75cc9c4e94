"""Adversarial training: objectives (pure loss functions) and a small trainer."""

from . import objectives
from .objectives import AttackConfig
from .trainer import TrainConfig, TrainResult, evaluate_accuracy, train

__all__ = ["objectives", "AttackConfig", "TrainConfig", "TrainResult", "train", "evaluate_accuracy"]
