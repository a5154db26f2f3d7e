"""Transfer learning: strategies, the fine-tuning loop, checkpoints and DDP."""

from finequant._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "STRATEGIES": "finequant.catalog", "FinetuneConfig": "finequant.train.config",
    "FinetuneResult": "finequant.train.loop", "TrainingDiverged": "finequant.train.loop",
    "evaluate": "finequant.train.loop", "finetune": "finequant.train.loop",
})
