"""Transfer learning: strategies, the fine-tuning loop, checkpoints and DDP."""

from finequant.train.config import FinetuneConfig
from finequant.train.loop import FinetuneResult, TrainingDiverged, evaluate, finetune
from finequant.train.strategies import STRATEGIES

__all__ = ["STRATEGIES", "FinetuneConfig", "FinetuneResult", "TrainingDiverged", "evaluate", "finetune"]
