"""``finequant finetune``: transfer learning from a pretrained model to your classes."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from finequant.data import load_data, stratified_split
from finequant.models import load_model
from finequant.summary import write_summary
from finequant.train import STRATEGIES, FinetuneConfig, FinetuneResult, finetune

console = Console()


def print_result(title: str, result: FinetuneResult) -> None:
    table = Table(title=title)
    for col in ("epoch", "phase", "train loss", "val acc", "time s"):
        table.add_column(col, justify="right")
    for h in result.history:
        table.add_row(str(h["epoch"]), h["phase"], f"{h['train_loss']:.4f}", f"{h['val_accuracy']:.4f}",
                      f"{h['epoch_time_s']:.1f}" + (" (cached)" if h["cached"] else ""))
    console.print(table)
    test = result.metrics["test"]
    console.print(f"test accuracy [bold]{test['accuracy']:.4f}[/], macro-F1 {test['macro_f1']:.4f} "
                  f"(best val epoch {result.best_epoch})")


def run_finetune(model_spec: str, data_spec: str, cfg: FinetuneConfig, out: Path, *, resume: bool = False,
                 weights: Path | None = None, arch: str | None = None, pretrained: bool = True,
                 trust_remote_code: bool = False, max_samples: int | None = None, val_frac: float = 0.1,
                 test_frac: float = 0.2, strict: bool = False) -> FinetuneResult:
    """Load, split, fine-tune and write ``OUT/model`` + ``OUT/summary.json``: the CLI's and demo's shared path."""
    torch.manual_seed(cfg.seed)  # a new head (or a --no-pretrained body) is initialized reproducibly
    loaded = load_model(model_spec, pretrained=pretrained, weights=weights, arch=arch,
                        trust_remote_code=trust_remote_code)
    splits = stratified_split(load_data(data_spec, strict=strict), val_frac=val_frac, test_frac=test_frac,
                              seed=cfg.seed, max_samples=max_samples)
    result = finetune(loaded, splits, cfg, out_dir=out, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        size = (out / "model" / "model.safetensors").stat().st_size
        write_summary(out, "finetune",
                      config={"model": model_spec, "data": data_spec, "finetune": cfg, "splits": splits.sizes(),
                              "max_samples": max_samples, "val_frac": val_frac, "test_frac": test_frac,
                              "world_size": int(os.environ.get("WORLD_SIZE", "1"))},
                      metrics=result.metrics, sizes={"model_bytes": size}, timings=result.timings,
                      history=result.history, best_epoch=result.best_epoch, new_keys=loaded.new_keys,
                      artifact=str(out / "model"))
    return result


def finetune_command(
    model: str = typer.Option(..., "--model", "-m", help="Model spec, e.g. efficientnet_lite0, timm:resnet18."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec, e.g. mnist5k, imagefolder:PATH."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint, model/, summary.json."),
    strategy: str = typer.Option("lp-ft", help=f"One of: {', '.join(STRATEGIES.names())}."),
    epochs: int = typer.Option(4),
    batch_size: int = typer.Option(64, help="Global batch size (split across torchrun processes)."),
    lr: float = typer.Option(1e-3, help="Head learning rate."),
    lr_mult: float = typer.Option(10.0, help="Body LR = lr / lr_mult (discriminative LRs)."),
    weight_decay: float = typer.Option(0.01),
    schedule: str = typer.Option("cosine", help="cosine, onecycle or constant."),
    label_smoothing: float = typer.Option(0.0),
    l1: float = typer.Option(0.0, help="L1 penalty on trainable weights."),
    l2sp: float = typer.Option(0.0, help="L2-SP penalty toward the pretrained weights."),
    freeze_blocks: int = typer.Option(0, help="partial: freeze the first N blocks."),
    freeze_pattern: list[str] = typer.Option(None, help="partial: freeze parameters matching this regex."),
    lp_epochs: int = typer.Option(None, help="lp-ft: epochs of head-only training (default half)."),
    train_bn: bool = typer.Option(False, help="Update BatchNorm statistics of frozen layers too."),
    freeze_bn_stats: bool = typer.Option(False, help="Keep all BatchNorm statistics at pretrained values."),
    augment: str = typer.Option("none", help="none, light or standard."),
    class_weights: str = typer.Option("none", help="none or balanced."),
    sampler: str = typer.Option("shuffle", help="shuffle or balanced."),
    early_stopping: int = typer.Option(None, help="Stop after N epochs without val improvement."),
    feature_cache: bool = typer.Option(True, help="Cache frozen-body features for head-only epochs."),
    image_size: int = typer.Option(None, help="Input size in px (default: the model's)."),
    seed: int = typer.Option(0),
    max_samples: int = typer.Option(None, help="Use a stratified subset of this many samples."),
    val_frac: float = typer.Option(0.1),
    test_frac: float = typer.Option(0.2),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out."),
    weights: Path = typer.Option(None, help="Local weights (safetensors or .pt state_dict)."),
    arch: str = typer.Option(None, help="Architecture spec for a file: weights spec."),
    pretrained: bool = typer.Option(True, help="Use the zoo's pretrained weights."),
    trust_remote_code: bool = typer.Option(False, help="Allow file:model.py:factory to run code."),
    strict: bool = typer.Option(False, help="Fail on unreadable files instead of skipping them."),
) -> None:
    """Fine-tune a pretrained model on a data set (new head, chosen strategy); works under torchrun."""
    cfg = FinetuneConfig(
        strategy=strategy, epochs=epochs, batch_size=batch_size, lr=lr, lr_mult=lr_mult, weight_decay=weight_decay,
        schedule=schedule, label_smoothing=label_smoothing, l1=l1, l2sp=l2sp, freeze_blocks=freeze_blocks,
        freeze_patterns=list(freeze_pattern or []), lp_epochs=lp_epochs, train_bn=train_bn,
        freeze_bn_stats=freeze_bn_stats, augment=augment,
        class_weights=class_weights, sampler=sampler, early_stopping=early_stopping, feature_cache=feature_cache,
        image_size=image_size, seed=seed,
    )
    result = run_finetune(model, data, cfg, out, resume=resume, weights=weights, arch=arch, pretrained=pretrained,
                          trust_remote_code=trust_remote_code, max_samples=max_samples, val_frac=val_frac,
                          test_frac=test_frac, strict=strict)
    if int(os.environ.get("RANK", "0")) == 0:
        print_result(f"{model} -> {data} [{strategy}]", result)
        console.print(f"model and summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
