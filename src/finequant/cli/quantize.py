"""``finequant quantize``: PTQ (static, dynamic, weight-only, fp16/bf16, nonlinear) or QAT of a model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant.catalog import METHODS, OBSERVERS, PTQ_STEPS
from finequant.cli.options import ConfigOptions, with_configs
from finequant.quant.config import QATConfig, QuantConfig

console = Console()


@with_configs(
    ConfigOptions(QuantConfig, "qcfg", aliases={"weight_bits": ("--bits",), "calib_batches": ("--calib",)},
                  choices={"method": METHODS.choices(), "observer": OBSERVERS.choices(), "ptq": PTQ_STEPS.choices()}),
    ConfigOptions(QATConfig, "qat", prefix="qat-"))
def quantize_command(
    qcfg: QuantConfig,
    qat: QATConfig,
    source: str = typer.Argument(..., help="Finetune run folder, model folder, or model spec (with --data)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: quant.safetensors, quant.json, summary.json."),
    data: str = typer.Option(None, help="Data spec (default: the run's)."),
    batch_size: int = typer.Option(32, min=1, help="Calibration batch size."),
    trust_remote_code: bool = typer.Option(False, help="Allow a model folder's own code (model.py, HF custom code)."),
) -> None:
    """Quantize a model and report float vs quantized accuracy, agreement, logit SQNR and packed size."""
    from finequant.workflow import quantize_run

    result = quantize_run(source, qcfg, out, data=data, batch_size=batch_size, qat=qat,
                          trust_remote_code=trust_remote_code)
    m, s = result["metrics"], result["sizes"]
    acts = f"A{qcfg.act_bits}" if qcfg.info.activations else ""
    table = Table(title=f"{source}: {qcfg.method} W{qcfg.weight_bits}{acts}")
    for col in ("variant", "test acc", "macro-F1", "size MB"):
        table.add_column(col, justify="right")
    table.add_row("float32", f"{m['float']['accuracy']:.4f}", f"{m['float']['macro_f1']:.4f}",
                  f"{s['float32_bytes'] / 1e6:.2f}")
    table.add_row(qcfg.method, f"{m['quantized']['accuracy']:.4f}", f"{m['quantized']['macro_f1']:.4f}",
                  f"{s['artifact_bytes'] / 1e6:.2f}")
    console.print(table)
    console.print(f"drop {m['accuracy_drop_pt']:+.2f} pt, top-1 agreement {m['top1_agreement']:.4f}, "
                  f"logit SQNR {m['logits_sqnr_db']:.1f} dB, size x{s['size_ratio']:.3f} (simulated in PyTorch; "
                  "`finequant eval --backend onnxruntime` measures the runtime)")
    for name, why in result["float_layers"].items():
        console.print(f"[yellow]float:[/] {name}: {why}", highlight=False)
    console.print(f"quantized model and summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
