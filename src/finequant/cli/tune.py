"""``finequant tune``: sensitivity, then the fastest (or smallest) quantized model within a budget."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant.catalog import BACKENDS, METHODS
from finequant.cli.options import ConfigOptions, with_configs
from finequant.tuning.config import OBJECTIVES, TuneConfig

console = Console()


@with_configs(ConfigOptions(TuneConfig, "cfg", aliases={"calib_batches": ("--calib",)},
                            choices={"objective": ", ".join(OBJECTIVES), "backend": BACKENDS.choices(),
                                     "method": METHODS.choices()}))
def tune_command(
    cfg: TuneConfig,
    source: str = typer.Argument(..., help="Finetune run folder (or model folder/spec with --data)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (trials are cached here: a rerun resumes)."),
    data: str = typer.Option(None, help="Data spec (default: the run's)."),
) -> None:
    """Per-layer sensitivity, then the fastest (or smallest) quantized model within --max-drop on the
    validation split, with the Pareto front; test accuracy of the chosen model at the end."""
    from finequant.workflow import tune_run

    r = tune_run(source, cfg, out, data=data, log_fn=lambda m: console.print(m, highlight=False))
    if r.sensitivity:
        t = Table(title="most sensitive layers (validation split)")
        for col in ("layer", "bits", "acc drop pt", "logit SQNR dB"):
            t.add_column(col, justify="right")
        for row in sorted(r.sensitivity, key=lambda row: -row["accuracy_drop"])[:8]:
            t.add_row(row["layer"], str(row["bits"]), f"{100 * row['accuracy_drop']:.2f}", f"{row['sqnr_db']:.1f}")
        console.print(t)
    if r.chosen is not None:
        t = Table(title="trials (validation split); * = Pareto front (accuracy, latency, size)")
        for col in ("trial", "val acc", "drop pt", "latency ms", "size MB", ""):
            t.add_column(col, justify="right")
        for row in r.trials:
            mark = ("*" if row["name"] in r.pareto else "") + (" chosen" if row["name"] == r.chosen else "")
            t.add_row(row["name"], f"{row['val_accuracy']:.4f}", f"{row['val_drop_pt']:+.2f}",
                      f"{row['latency_ms']:.2f}", f"{row['packed_bytes'] / 1e6:.2f}", mark)
        console.print(t)
        best = next(row for row in r.trials if row["name"] == r.chosen)
        console.print(f"chosen: {r.chosen} -- val drop {best['val_drop_pt']:+.2f} pt (budget {r.allowed_drop_pt:.2f}), "
                      f"{best['latency_ms']:.2f} ms on {cfg.backend}, {best['packed_bytes'] / 1e6:.2f} MB; test "
                      f"accuracy {r.test['quantized']['accuracy']:.4f} (float {r.test['float']['accuracy']:.4f})")
    console.print(f"summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
