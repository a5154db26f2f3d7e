"""Settings left to finequant (``None`` in :class:`FinetuneConfig`), decided from the model, the data and
the run, each with the reason printed and saved in the run's ``decisions``."""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import replace

import numpy as np
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from finequant.data.base import Splits
from finequant.models.base import LoadedModel
from finequant.train.config import FinetuneConfig
from finequant.train.distributed import DistInfo

log = logging.getLogger(__name__)

BN_FREEZE_BELOW_SAMPLES = 20_000
BN_FREEZE_BELOW_BATCH = 32
TRANSFORMER_LAYER_DECAY = 0.8
TEXT_TOKENS_CAP = 512
PROBE_BELOW_PER_CLASS = 20
DEFAULT_EPOCHS, MAX_EPOCHS, MIN_STEPS = 4, 10, 200
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks|block|h|stages)\.(\d+)\.")


def bn_policy(model: nn.Module, train_samples: int, batch_per_process: int, info: DistInfo) -> tuple[bool, str]:
    """Whether to keep pretrained BatchNorm statistics, and why.

    Re-estimating statistics helps only with many samples in large batches close to the source
    domain; on small data or small per-process batches it wrecks a pretrained body (full fine-tuning
    of EfficientNet-Lite0 on digits: 50.4% with updated statistics, 95.3% with them frozen), and
    under DDP each process would see only its shard's statistics. A body whose statistics are still at
    their initial values (random init) has nothing to keep, so it trains them."""
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
           and m.running_mean is not None]
    if not bns:
        return False, "the model has no BatchNorm layers"
    if all(not m.running_mean.any() and bool((m.running_var == 1).all()) for m in bns):
        return False, "BatchNorm statistics are at their initial values (no pretrained statistics to keep)"
    if info.enabled:
        return True, f"{info.world_size} processes each see only their shard's batch statistics"
    if batch_per_process < BN_FREEZE_BELOW_BATCH:
        return True, f"batches of {batch_per_process} < {BN_FREEZE_BELOW_BATCH} give noisy statistics"
    if train_samples < BN_FREEZE_BELOW_SAMPLES:
        return True, f"{train_samples} training samples < {BN_FREEZE_BELOW_SAMPLES}: too few to re-estimate them"
    return False, f"{train_samples} training samples in batches of {batch_per_process}: statistics are re-estimated"


def is_transformer(model: nn.Module) -> bool:
    """Attention blocks (torch, timm, Hugging Face all name their modules ...Attention...)."""
    return any("Attention" in type(m).__name__ for m in model.modules())


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth from the top: 0 for the head and anything after the last block, L - i for
    block i of L, L + 1 for embeddings (names with ``embed``) and anything before the first block."""
    names = [n for n, _ in model.named_parameters()]
    index = {n: int(m.group(1)) for n in names if (m := _BLOCK.search(n))}
    if not index:
        return dict.fromkeys(names, 0)
    blocks, depths, seen_block = max(index.values()) + 1, {}, False
    for n in names:  # registration order: embeddings, blocks, final norm / pooler / head
        seen_block |= n in index
        depths[n] = blocks - index[n] if n in index else (blocks + 1 if "embed" in n or not seen_block else 0)
    return depths


def default_strategy(train_samples: int, classes: int) -> tuple[str, str]:
    """lp-ft (the head fit first, so fine-tuning does not start from a random head: Kumar et al., 2022), or only
    the head when the data are too few per class for the validation split to tell good epochs from bad."""
    per_class = train_samples / max(classes, 1)
    if per_class < PROBE_BELOW_PER_CLASS:
        return "last-layer", (f"{per_class:.0f} training samples per class < {PROBE_BELOW_PER_CLASS}: too few to "
                              "fine-tune the body safely; the head is fit to convergence")
    return "lp-ft", (f"{per_class:.0f} training samples per class: the head is fit first, then everything is "
                     "fine-tuned (lp-ft)")


def default_epochs(train_samples: int, batch: int) -> tuple[int, str]:
    """4 epochs, or as many (up to 10) as give ``MIN_STEPS`` optimizer steps on a small data set."""
    steps = max(1, math.ceil(train_samples / batch))
    epochs = min(MAX_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps)))
    return epochs, (f"{steps} steps per epoch" + (f": {epochs} epochs give at least {MIN_STEPS} optimizer steps"
                                                   if epochs > DEFAULT_EPOCHS else ""))


def default_workers(task: str, info: DistInfo) -> tuple[int, str]:
    """DataLoader worker processes: image decoding moves off the training process when each process has at
    least 4 cores (half of them decode); with fewer, a worker would take a core from the training arithmetic,
    and tokenizing a batch costs less than a worker's start-up and transfer."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    per_process = max(1, cores // info.world_size)
    if task == "text":
        return 0, "text: tokenized in the training process (cheaper than a worker's transfer)"
    if per_process < 4:
        return 0, f"{per_process} core(s) per process: a worker would compete with training for them"
    workers = min(8, per_process // 2)
    return workers, f"{per_process} cores per process: {workers} decode images while the rest train"


def text_max_tokens(loaded: LoadedModel, texts: list[str]) -> tuple[int, str]:
    """Truncation length covering 99% of the training texts whole (a multiple of 8), at most the encoder's
    limit. Batches are padded to their own longest text, so the limit only cuts the rare long ones."""
    encoder = getattr(loaded.model, "encoder", None)
    limit = min(TEXT_TOKENS_CAP, int(getattr(getattr(encoder, "config", None), "max_position_embeddings", 0)
                                     or loaded.tokenizer.model_max_length))
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), min(len(texts), 5000), replace=False)]
    lengths = [len(ids) for ids in loaded.tokenizer(sample, truncation=True, max_length=limit)["input_ids"]]
    p99 = float(np.percentile(lengths, 99))
    n = min(limit, max(8, 8 * math.ceil(p99 / 8)))
    return n, (f"99% of {len(sample)} training texts have <= {p99:.0f} tokens (median {np.median(lengths):.0f}, "
               f"longest {max(lengths)}); the encoder takes {limit}")


def resolve_defaults(cfg: FinetuneConfig, loaded: LoadedModel, splits: Splits, batch_per_process: int,
                     info: DistInfo) -> tuple[FinetuneConfig, dict[str, str]]:
    """Fill the settings left to finequant (``None``) from the data and the run, saying what and why."""
    decisions: dict[str, str] = {}

    def decide(key: str, value: object, why: str) -> None:
        nonlocal cfg
        cfg = replace(cfg, **{key: value})
        decisions[key] = f"{value}: {why}"
        if info.is_main:
            log.info("%s = %s (%s)", key, value, why)

    if cfg.strategy is None:
        decide("strategy", *default_strategy(len(splits.train), len(splits.train.classes)))
    if cfg.epochs is None:
        decide("epochs", *default_epochs(len(splits.train), batch_per_process * info.world_size))
    if cfg.num_workers is None:
        decide("num_workers", *default_workers(loaded.task, info))
    if cfg.freeze_bn_stats is None:
        decide("freeze_bn_stats", *((False, "train_bn is set") if cfg.train_bn
                                    else bn_policy(loaded.model, len(splits.train), batch_per_process, info)))
    if cfg.layer_decay is None:
        decide("layer_decay", *((TRANSFORMER_LAYER_DECAY, "a transformer: lower blocks keep more of what they learned")
                                if is_transformer(loaded.model) else (1.0, "not a transformer")))
    if cfg.channels_last is None:
        convs = sum(isinstance(m, nn.Conv2d) for m in loaded.model.modules())
        decide("channels_last", *((True, f"{convs} convolutions: channels_last steps are faster on CPU (0.79x time "
                                         "per step for EfficientNet-Lite0, benchmarks/training_speed.py)")
                                  if loaded.task == "image" and convs >= 4 else
                                  (False, "not a convolutional image model")))
    if loaded.task == "text" and cfg.max_tokens is None:
        decide("max_tokens", *text_max_tokens(loaded, list(splits.train.items)))
    if loaded.task == "text":
        loaded.tokenizer.model_max_length = cfg.max_tokens  # saved with the tokenizer: every later step uses it
    return cfg, decisions
