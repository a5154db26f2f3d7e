"""``finequant quantize``: PTQ (static, dynamic, weight-only, fp16/bf16, nonlinear) or QAT of a model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.runs import resolve_model, run_data
from finequant.data import make_loader
from finequant.quant import METHODS, OBSERVERS, QuantConfig, quantize
from finequant.quant.artifact import QUANT_WEIGHTS, save_quantized
from finequant.quant.compare import compare_models
from finequant.quant.ptq import PTQ_STEPS
from finequant.summary import write_summary
from finequant.train import FinetuneConfig

console = Console()


def run_quantize(source: str, qcfg: QuantConfig, out: Path, *, data: str | None = None, batch_size: int = 32,
                 qat: FinetuneConfig | None = None) -> dict[str, Any]:
    """Quantize, compare with float on the test split, write the artifact and summary.json."""
    loaded, run = resolve_model(source)
    rd = run_data(source, loaded, run, data)
    splits, data, seed = rd.splits, rd.spec, rd.seed
    calib = make_loader(splits.train, loaded, batch_size=batch_size, shuffle=True, seed=seed)
    t0 = time.perf_counter()
    if qcfg.method == "qat":
        from finequant.quant.qat import quantization_aware_training

        qm, _ = quantization_aware_training(loaded, splits, qcfg, qat or FinetuneConfig(), calib)
    else:
        qm = quantize(loaded, qcfg, calib)
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = compare_models(loaded.model, qm.model, make_loader(splits.test, loaded, batch_size=128),
                             len(splits.train.classes))
    eval_s = time.perf_counter() - t0
    save_quantized(qm, loaded, out)
    float_bytes = sum(p.numel() * 4 for p in loaded.model.parameters())
    sizes = {"float32_bytes": float_bytes, "packed_weight_bytes": qm.packed_weight_bytes(),
             "artifact_bytes": (out / QUANT_WEIGHTS).stat().st_size}
    sizes["size_ratio"] = sizes["artifact_bytes"] / float_bytes
    write_summary(out, "quantize", config={"source": source, "data": data, "quantize": qcfg,
                                           "qat": qat if qcfg.method == "qat" else None, "seed": seed},
                  metrics=metrics, sizes=sizes, timings={"quantize_s": quant_s, "eval_s": eval_s},
                  layers=qm.layers, float_layers=qm.float_layers(), folded=qm.folded, ptq=qm.ptq_report)
    return {"metrics": metrics, "sizes": sizes, "float_layers": qm.float_layers(),
            "timings": {"quantize_s": quant_s, "eval_s": eval_s}, "ptq": qm.ptq_report}


def quantize_command(
    source: str = typer.Argument(..., help="Finetune run folder, model folder, or model spec."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: quant.safetensors, quant.json, summary.json."),
    method: str = typer.Option("static", help=f"One of: {', '.join(METHODS.names())}."),
    bits: int = typer.Option(8, help="Weight bits (2-16)."),
    act_bits: int = typer.Option(8, help="Activation bits (static/dynamic/qat)."),
    granularity: str = typer.Option("per-channel", help="per-tensor, per-channel or per-group (weights)."),
    group_size: int = typer.Option(128, help="Inputs per group for per-group weights."),
    scheme: str = typer.Option("affine", help="Weight scheme: affine, pow2 or kmeans (nonlinear)."),
    observer: str = typer.Option("minmax", help=f"Activation observer: {', '.join(OBSERVERS.names())}."),
    weight_observer: str = typer.Option("minmax", help="Weight range: minmax or mse."),
    calib: int = typer.Option(16, help="Calibration batches."),
    batch_size: int = typer.Option(32, help="Calibration batch size."),
    skip: list[str] = typer.Option(None, help="Regex of layer names to keep in float (repeatable)."),
    ptq: list[str] = typer.Option(None, help=f"Advanced PTQ step (repeatable): {', '.join(PTQ_STEPS.names())}."),
    adaround_iterations: int = typer.Option(400, help="AdaRound: optimization steps per layer."),
    data: str = typer.Option(None, help="Data spec (default: the run's)."),
    qat_epochs: int = typer.Option(3, help="QAT: training epochs."),
    qat_lr: float = typer.Option(1e-4, help="QAT: learning rate."),
    distill: float = typer.Option(0.5, help="QAT: weight of distillation from the float model."),
    seed: int = typer.Option(0),
) -> None:
    """Quantize a model and report float vs quantized accuracy, agreement, logit SQNR and packed size."""
    qcfg = QuantConfig(method=method, weight_bits=bits, act_bits=act_bits, granularity=granularity,
                       group_size=group_size, scheme=scheme, observer=observer, weight_observer=weight_observer,
                       calib_batches=calib, skip=list(skip or []), ptq=list(ptq or []),
                       adaround_iterations=adaround_iterations, seed=seed)
    qat = FinetuneConfig(epochs=qat_epochs, lr=qat_lr, lr_mult=1.0, distill_weight=distill, seed=seed,
                         freeze_bn_stats=True)
    result = run_quantize(source, qcfg, out, data=data, batch_size=batch_size, qat=qat)
    m, s = result["metrics"], result["sizes"]
    table = Table(title=f"{source}: {method} W{bits}" + ("" if method in ("weight-only", "nonlinear") else f"A{act_bits}"))
    for col in ("variant", "test acc", "macro-F1", "size MB"):
        table.add_column(col, justify="right")
    table.add_row("float32", f"{m['float']['accuracy']:.4f}", f"{m['float']['macro_f1']:.4f}",
                  f"{s['float32_bytes'] / 1e6:.2f}")
    table.add_row(method, f"{m['quantized']['accuracy']:.4f}", f"{m['quantized']['macro_f1']:.4f}",
                  f"{s['artifact_bytes'] / 1e6:.2f}")
    console.print(table)
    console.print(f"drop {m['accuracy_drop_pt']:+.2f} pt, top-1 agreement {m['top1_agreement']:.4f}, "
                  f"logit SQNR {m['logits_sqnr_db']:.1f} dB, size x{s['size_ratio']:.3f}")
    for name, why in result["float_layers"].items():
        console.print(f"[yellow]float:[/] {name}: {why}", highlight=False)
    console.print(f"quantized model and summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
