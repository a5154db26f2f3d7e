"""The fine-tuning loop, readable top to bottom: phases -> epochs -> batches.

Feature caching, checkpoints, DDP and regularizers are small helpers it calls.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset, WeightedRandomSampler

from finequant.data.base import LabeledData, Splits, stratified_split
from finequant.data.loaders import TextCollate, make_dataset
from finequant.errors import ConfigError, FinequantError, ModelError
from finequant.io import atomic_folder, check_writable
from finequant.models.artifact import save_artifact
from finequant.models.base import LoadedModel, forward, to_device
from finequant.summary import SUMMARY
from finequant.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from finequant.train.config import FinetuneConfig
from finequant.train.defaults import layer_depths, resolve_defaults
from finequant.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from finequant.train.features import cached_features, default_cache_dir
from finequant.train.lr_find import find_lr
from finequant.train.metrics import confusion, metrics_from_confusion
from finequant.train.probe import fit_linear_probe
from finequant.train.strategies import STRATEGIES, Phase, head_names

log = logging.getLogger(__name__)


class TrainingDiverged(FinequantError):
    """The loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    model: LoadedModel
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    timings: dict[str, float] = field(default_factory=dict)
    config: FinetuneConfig | None = None
    """The config as run, with the settings finequant decided filled in."""
    decisions: dict[str, str] = field(default_factory=dict)
    """What finequant decided for settings left open, and why."""


def set_trainable(model: nn.Module, trainable: frozenset[str], head: frozenset[str], train_bn: bool,
                  freeze_bn_stats: bool = False) -> None:
    """requires_grad per the phase; frozen BatchNorm layers (all of them with ``freeze_bn_stats``,
    and a fully frozen body) stay in eval mode, so their running statistics do not change."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    if trainable <= head:  # frozen body: eval everywhere, so cached and uncached paths agree exactly
        model.eval()
        return
    model.train()
    if train_bn:
        return
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            own = [f"{name}.{n}" for n, _ in m.named_parameters()]
            if freeze_bn_stats or (own and not any(n in trainable for n in own)):
                m.eval()


def make_optimizer(model: nn.Module, phase: Phase, head: frozenset[str], cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW with discriminative LRs (body = head / lr_mult, times layer_decay per block below the top) and
    no weight decay on norms and biases.

    With L2-SP the body's decay goes toward the pretrained weights (a loss term), not toward zero.
    """
    depths = layer_depths(model) if cfg.layer_decay not in (None, 1.0) else {}
    groups: dict[tuple[bool, int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if name in phase.trainable:
            groups.setdefault((name in head, depths.get(name, 0), p.ndim <= 1), []).append(p)
    param_groups = []
    for (is_head, depth, no_decay), params in sorted(groups.items()):
        body = (cfg.layer_decay or 1.0) ** depth / cfg.lr_mult
        lr = cfg.lr * phase.lr_scale * (1.0 if is_head else body)
        wd = 0.0 if no_decay or (cfg.l2sp > 0 and not is_head) else cfg.weight_decay
        param_groups.append({"params": params, "lr": lr, "weight_decay": wd})
    return torch.optim.AdamW(param_groups)


def make_scheduler(opt: torch.optim.Optimizer, cfg: FinetuneConfig, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(total_steps, 2))
    warmup = int(cfg.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def regularization(model: nn.Module, trainable: frozenset[str], cfg: FinetuneConfig,
                   pretrained: dict[str, torch.Tensor]) -> torch.Tensor | float:
    """L1 on trainable weights plus L2-SP: ``l2sp * ||w - w_pretrained||^2`` on the trainable body."""
    reg: torch.Tensor | float = 0.0
    for name, p in model.named_parameters():
        if name not in trainable:
            continue
        if cfg.l1:
            reg = reg + cfg.l1 * p.abs().sum()
        if cfg.l2sp and name in pretrained:
            reg = reg + cfg.l2sp * (p - pretrained[name]).pow(2).sum()
    return reg


def _shard(dataset, info: DistInfo):
    return Subset(dataset, range(info.rank, len(dataset), info.world_size)) if info.enabled else dataset


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
             info: DistInfo = DistInfo()) -> dict[str, Any]:
    """Loss and metrics over a loader (each rank's shard, summed across ranks)."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum = torch.zeros(2, dtype=torch.float64)
    for inputs, y in loader:
        logits = forward(model, to_device(inputs, device)).float().cpu()
        loss_sum += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), len(y)], dtype=torch.float64)
        cm += confusion(logits.argmax(1), y, num_classes)
    cm, loss_sum = all_reduce_sum(cm, info), all_reduce_sum(loss_sum, info)
    model.train(was_training)
    return {"loss": float(loss_sum[0] / loss_sum[1].clamp(min=1)), **metrics_from_confusion(cm)}


def _loader(dataset, cfg: FinetuneConfig, batch: int, collate, sampler=None) -> DataLoader:
    # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which then
    # differs between an uninterrupted and a resumed run (augmentation draws from the global RNG).
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=False, collate_fn=collate,
                      num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def _train_sampler(dataset, labels: torch.Tensor, cfg: FinetuneConfig, info: DistInfo, epoch: int):
    """Seeded per epoch, so a resumed run sees the same order; identical global batches for any world size."""
    if cfg.sampler == "balanced":
        if info.enabled:
            raise ConfigError("sampler='balanced' is single-process only; use class_weights='balanced' under torchrun")
        weights = (1.0 / torch.bincount(labels).double())[labels]
        return WeightedRandomSampler(weights, len(labels), generator=torch.Generator().manual_seed(cfg.seed + epoch))
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch)
    return sampler


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2


@torch.no_grad()
def check_input(loaded: LoadedModel, dataset: Any, collate: Any, device: torch.device, native_size: int) -> None:
    """One forward pass on two training samples before any training, so that an input the model
    cannot take fails at once with the model, the input shape and the fix, not deep in epoch one."""
    x, _ = next(iter(DataLoader(dataset, batch_size=min(2, len(dataset)), collate_fn=collate,
                                generator=torch.Generator())))
    was_training = loaded.model.training
    loaded.model.eval()
    try:
        forward(loaded.model, to_device(x, device))
    except (RuntimeError, ValueError, IndexError) as e:
        shape = {k: tuple(v.shape) for k, v in x.items()} if isinstance(x, dict) else tuple(x.shape)
        fix = (f"set --image-size (finetune config image_size) to the model's size, "
               f"{native_size}, or another size it accepts" if loaded.task == "image"
               else "check that the tokenizer belongs to the model")
        raise ModelError(f"{loaded.spec} cannot take input of shape {shape}: {str(e).splitlines()[0]}; {fix}") from e
    finally:
        loaded.model.train(was_training)


def check_resumable(ckpt: dict[str, Any], cfg: FinetuneConfig, identity: dict[str, Any], out: Path) -> None:
    """Resume only the same run: same config, model, classes and data; else say what differs."""
    diffs = [f"{k}: {ckpt.get('config', {}).get(k)!r} -> {v!r}" for k, v in asdict(cfg).items()
             if ckpt.get("config", {}).get(k) != v]
    diffs += [f"{k}: {ckpt.get('identity', {}).get(k)!r} -> {v!r}" for k, v in identity.items()
              if ckpt.get("identity", {}).get(k) != v]
    if diffs:
        raise ConfigError(f"cannot resume {out}: the run differs from the interrupted one ({'; '.join(diffs)}); "
                          "rerun with the same settings, or without --resume to start fresh")


def finetune(loaded: LoadedModel, data: Splits | LabeledData, cfg: FinetuneConfig | None = None,
             out_dir: str | Path | None = None, resume: bool = False,
             teacher: nn.Module | None = None, keep_checkpoint: bool = False) -> FinetuneResult:
    """Fine-tune ``loaded`` on ``data`` (split with ``cfg.seed`` if not already split).

    Writes ``OUT/checkpoint.pt`` every epoch and ``OUT/model`` at the end when ``out_dir`` is given; the
    checkpoint (several times the model's size) is removed once the run completes unless ``keep_checkpoint``.
    With a ``teacher`` the loss mixes in distillation from its logits (``cfg.distill_weight``).
    """
    cfg = cfg or FinetuneConfig()
    info = init_distributed()
    torch.manual_seed(cfg.seed)
    splits = data if isinstance(data, Splits) else stratified_split(data, seed=cfg.seed)
    if not len(splits.val):
        raise ConfigError("the validation split is empty: it picks the best epoch and tunes the head; "
                          "use val_frac > 0 (e.g. 0.1) or give a val split")
    classes = splits.train.classes
    loaded.set_num_classes(len(classes), classes)
    native_size = loaded.preprocess.input_size if loaded.preprocess else 0
    if loaded.task == "image" and cfg.image_size:
        loaded.preprocess = loaded.preprocess.with_size(cfg.image_size)
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must divide by the {info.world_size} processes")
    batch = cfg.batch_size // info.world_size
    device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)
    head_module, head = loaded.head, head_names(loaded)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    cfg, decisions = resolve_defaults(cfg, loaded, splits, batch, info)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    phases = STRATEGIES.get(cfg.strategy)(loaded, cfg)
    epoch_phase = [i for i, ph in enumerate(phases) for _ in range(ph.epochs)]
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters() if n not in head} if cfg.l2sp else {}
    labels = torch.as_tensor(splits.train.labels)
    weight = None
    if cfg.class_weights == "balanced":
        weight = (len(labels) / (len(classes) * torch.bincount(labels, minlength=len(classes)).double())).float()
    collate = TextCollate(loaded.tokenizer) if loaded.task == "text" else None
    train_set = make_dataset(splits.train, loaded, cfg.augment)
    val_set = make_dataset(splits.val, loaded)
    out = Path(out_dir) if out_dir else None
    if out is not None and info.is_main:  # checkpoint (weights, optimizer state, best weights) + the model
        check_writable(out, 5 * sum(p.numel() * p.element_size() for p in model.parameters()))
    run_identity = {"model": loaded.spec, "classes": list(classes), "splits": splits.sizes(),
                    "train_labels": hashlib.sha256(np.asarray(splits.train.labels).tobytes()).hexdigest()[:16],
                    "world_size": info.world_size}

    history: list[dict[str, Any]] = []
    best = {"score": -math.inf, "epoch": -1, "state": None}
    start_epoch, ckpt = 0, None
    check_input(loaded, train_set, collate, device, native_size)  # before the RNG is restored: it augments
    if resume:
        if out is None:
            raise ConfigError("resume needs out_dir (the folder of the interrupted run)")
        ckpt = load_checkpoint(out)
        if cfg.lr == "auto" and not isinstance(found := ckpt.get("config", {}).get("lr"), str) and found is not None:
            cfg = replace(cfg, lr=found)
            decisions["lr"] = f"{found:.3g}: picked by the range test of the interrupted run"
        check_resumable(ckpt, cfg, run_identity, out)
        model.load_state_dict(ckpt["model"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        best = {"score": ckpt["best_score"], "epoch": ckpt["best_epoch"], "state": ckpt["best_state"]}
        torch.set_rng_state(ckpt["rng"])
        log.info("resuming %s after epoch %d", out, ckpt["epoch"])

    timings: dict[str, float] = {"feature_extraction_s": 0.0}
    cache: dict[str, TensorDataset] = {}
    opt = sched = train_module = None
    current_phase = None
    for epoch in range(start_epoch, cfg.epochs):
        phase_idx = epoch_phase[epoch]
        phase = phases[phase_idx]
        # cached features feed one Linear head; distillation heads and conv heads see other inputs
        use_cache = (cfg.feature_cache and phase.trainable <= head and cfg.augment == "none"
                     and isinstance(head_module, nn.Linear) and not loaded.extra_heads)
        if use_cache and not cache:
            t0 = time.perf_counter()
            cache_dir = None if cfg.feature_cache_dir == "" else Path(cfg.feature_cache_dir or default_cache_dir())
            for split, ds in (("train", train_set), ("val", val_set)):
                data_split = getattr(splits, split)
                feats = cached_features(loaded, data_split, _loader(ds, cfg, 256, collate), device, cache_dir,
                                        f"features of the {split} split" if info.is_main else None)
                cache[split] = TensorDataset(feats, torch.as_tensor(data_split.labels))
            timings["feature_extraction_s"] += time.perf_counter() - t0
        if phase_idx != current_phase:
            set_trainable(model, phase.trainable, head, cfg.train_bn, cfg.freeze_bn_stats)
            steps = math.ceil(len(range(info.rank, len(train_set), info.world_size)) / batch)
            if cfg.lr == "auto" and not (use_cache and cfg.probe == "lbfgs"):
                # every process runs the same test on the same batches, so all pick the same rate
                ds = cache["train"] if use_cache else train_set
                found = find_lr(head_module if use_cache else model,
                                lambda lr: make_optimizer(model, phase, head, replace(cfg, lr=lr / phase.lr_scale)),
                                _loader(ds, cfg, batch, None if use_cache else collate,
                                        _train_sampler(ds, labels, cfg, DistInfo(), -1)), device)
                cfg = replace(cfg, lr=found.lr / phase.lr_scale)
                decisions["lr"] = f"{cfg.lr:.3g}: {found.reason()}"
                if info.is_main:
                    log.info("lr = %.3g (%s)", cfg.lr, found.reason())
            opt = make_optimizer(model, phase, head, cfg)
            sched = make_scheduler(opt, cfg, steps * phase.epochs)
            if ckpt is not None and ckpt["phase"] == phase_idx:
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
            trained = head_module if use_cache else model
            train_module = DDP(trained) if info.enabled else trained
            current_phase = phase_idx
        # again every epoch: evaluate() put the whole model back in train mode, frozen BN included
        set_trainable(model, phase.trainable, head, cfg.train_bn, cfg.freeze_bn_stats)

        probe = use_cache and cfg.probe == "lbfgs"
        if probe and any(h.get("probe_l2") is not None and h["phase"] == phase.name for h in history):
            continue  # the head was solved to convergence in this phase's first epoch: nothing left to do
        t0 = time.perf_counter()
        probe_l2 = None
        if probe:
            fit = fit_linear_probe(head_module, cache["train"].tensors, cache["val"].tensors, weight)
            loss_sum, n_seen, probe_l2 = fit.train_loss, 1, fit.l2
        else:
            ds = cache["train"] if use_cache else train_set
            loader = _loader(ds, cfg, batch, None if use_cache else collate,
                             _train_sampler(ds, labels, cfg, info, epoch))
            loss_sum, n_seen = 0.0, 0
            with Progress(transient=True, disable=not info.is_main) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs} [{phase.name}]", total=len(loader))
                for step, (inputs, y) in enumerate(loader):
                    inputs, y = to_device(inputs, device), y.to(device)
                    if cfg.channels_last and not use_cache:
                        inputs = inputs.contiguous(memory_format=memory_format)
                    logits = forward(train_module, inputs)
                    loss = F.cross_entropy(logits, y, weight=None if weight is None else weight.to(device),
                                           label_smoothing=cfg.label_smoothing)
                    if teacher is not None:
                        with torch.no_grad():
                            soft = forward(teacher, inputs)
                        loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distillation_loss(
                            logits, soft, cfg.distill_temperature)
                    total = loss + regularization(model, phase.trainable, cfg, pretrained)
                    if not torch.isfinite(total):
                        raise TrainingDiverged(
                            f"loss is {total.item()} at epoch {epoch + 1}, batch {step}; the last good checkpoint "
                            f"(epoch {epoch}) is kept. Lower --lr, enable gradient clipping or check the data.")
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       cfg.max_grad_norm)
                    opt.step()
                    sched.step()
                    loss_sum += loss.item() * len(y)
                    n_seen += len(y)
                    bar.advance(task)
        train_loss = all_reduce_sum(torch.tensor([loss_sum, n_seen], dtype=torch.float64), info)
        epoch_time = time.perf_counter() - t0

        if use_cache:
            val = evaluate(head_module, _loader(_shard(cache["val"], info), cfg, 256, None), len(classes), device, info)
        else:
            val = evaluate(model, _loader(_shard(val_set, info), cfg, 256, collate), len(classes), device, info)
        record = {"epoch": epoch + 1, "phase": phase.name, "train_loss": float(train_loss[0] / train_loss[1]),
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                  "epoch_time_s": epoch_time, "cached": use_cache, "probe_l2": probe_l2}
        history.append(record)
        if info.is_main:
            log.info("epoch %d/%d [%s] train_loss %.4f val_acc %.4f (%.1fs%s)", epoch + 1, cfg.epochs, phase.name,
                     record["train_loss"], val["accuracy"], epoch_time, ", cached features" if use_cache else "")
        if val["accuracy"] > best["score"]:
            best = {"score": val["accuracy"], "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if out is not None and info.is_main:
            save_checkpoint(out, {
                "epoch": epoch, "phase": phase_idx, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": history,
                "best_score": best["score"], "best_epoch": best["epoch"], "best_state": best["state"],
                "config": asdict(cfg), "identity": run_identity,
            })
        barrier(info)
        if cfg.early_stopping and epoch + 1 - best["epoch"] >= cfg.early_stopping:
            log.info("early stopping: no val improvement for %d epoch(s); best epoch %d", cfg.early_stopping,
                     best["epoch"])
            break

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.to(memory_format=torch.contiguous_format).eval()  # what quantizers and exporters expect
    test_set = make_dataset(splits.test, loaded)
    test = evaluate(model, _loader(_shard(test_set, info), cfg, 256, collate), len(classes), device, info)
    timings["train_s"] = sum(h["epoch_time_s"] for h in history)
    result = FinetuneResult(loaded, {"test": test, "best_val_accuracy": best["score"]}, history, best["epoch"], timings,
                            cfg, decisions)
    if out is not None and info.is_main:
        # an earlier run's summary.json stops describing the folder now (a kill from here leaves a folder
        # that says it is incomplete, never new weights beside old numbers); the model folder lands whole
        (out / SUMMARY).unlink(missing_ok=True)
        with atomic_folder(out / "model") as tmp:
            save_artifact(loaded, tmp)
        if not keep_checkpoint:  # the run is complete: the model is saved, the resume state is not needed
            (out / CHECKPOINT).unlink(missing_ok=True)
    return result
