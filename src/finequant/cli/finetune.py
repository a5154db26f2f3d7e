"""``finequant finetune``: transfer learning from a pretrained model to your classes."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant.catalog import STRATEGIES
from finequant.cli.options import ConfigOptions, with_configs
from finequant.train.config import FinetuneConfig

console = Console()


@with_configs(ConfigOptions(FinetuneConfig, "cfg", aliases={"freeze_patterns": ("--freeze-pattern",)},
                            choices={"strategy": STRATEGIES.choices()}))
def finetune_command(
    cfg: FinetuneConfig,
    model: str = typer.Option(..., "--model", "-m", help="Model spec, e.g. efficientnet_lite0, timm:resnet18."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec, e.g. mnist5k, imagefolder:PATH."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint, model/, summary.json."),
    max_samples: int = typer.Option(None, min=1, help="Use a stratified subset of this many samples."),
    val_frac: float = typer.Option(0.1, min=0.0, max=0.9, help="Validation fraction of each class."),
    test_frac: float = typer.Option(0.2, min=0.01, max=0.9, help="Test fraction of each class."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out."),
    weights: Path = typer.Option(None, help="Local weights (safetensors or .pt state_dict)."),
    arch: str = typer.Option(None, help="Architecture spec for a file: weights spec."),
    pretrained: bool = typer.Option(True, help="Use the zoo's pretrained weights."),
    trust_remote_code: bool = typer.Option(False, help="Allow a model folder's own code (model.py, HF custom code)."),
    strict: bool = typer.Option(False, help="Fail on unreadable files instead of skipping them."),
    keep_checkpoint: bool = typer.Option(False, help="Keep checkpoint.pt after the run completes."),
    test_data: str = typer.Option(None, help="A separate test set (data spec), used as given; --data is then "
                                             "split into train and val only."),
) -> None:
    """Fine-tune a pretrained model on a data set (new head, chosen strategy); works under torchrun."""
    from finequant.workflow import finetune_run

    result = finetune_run(model, data, cfg, out, resume=resume, weights=weights, arch=arch, pretrained=pretrained,
                          trust_remote_code=trust_remote_code, max_samples=max_samples, val_frac=val_frac,
                          test_frac=test_frac, strict=strict, test_data=test_data, keep_checkpoint=keep_checkpoint)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    table = Table(title=f"{model} -> {data} [{cfg.strategy}]")
    for col in ("epoch", "phase", "train loss", "val acc", "time s"):
        table.add_column(col, justify="right")
    for h in result.history:
        table.add_row(str(h["epoch"]), h["phase"], f"{h['train_loss']:.4f}", f"{h['val_accuracy']:.4f}",
                      f"{h['epoch_time_s']:.1f}" + (" (cached)" if h["cached"] else ""))
    console.print(table)
    for key, why in result.decisions.items():
        console.print(f"[dim]decided:[/] {key} = {why}", highlight=False)
    test = result.metrics["test"]
    console.print(f"test accuracy [bold]{test['accuracy']:.4f}[/], macro-F1 {test['macro_f1']:.4f} "
                  f"(best val epoch {result.best_epoch}); model and summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
