"""``finequant tune``: per-layer sensitivity, and mixed precision (weight bits per layer) within an
accuracy budget, measured on the validation split and reported on the test split."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.runs import resolve_model, run_data
from finequant.data import make_loader
from finequant.quant import QuantConfig, quantize
from finequant.quant.artifact import save_quantized
from finequant.quant.compare import compare_models
from finequant.summary import write_summary
from finequant.tune import FLOAT, choose_bits, layer_sensitivity, mixed_config

console = Console()
MAX_TRIALS = 8


def _bits(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def sensitivity_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of accuracy drop per layer and bit width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    bits = sorted({r["bits"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
    width = 0.8 / len(bits)
    for k, b in enumerate(bits):
        drops = [100 * next(r["accuracy_drop"] for r in rows if r["layer"] == layer and r["bits"] == b)
                 for layer in layers]
        ax.bar([i + k * width for i in range(len(layers))], drops, width, label=f"{b}-bit weights")
    ax.set_xticks([i + width * (len(bits) - 1) / 2 for i in range(len(layers))], layers, rotation=90, fontsize=6)
    ax.set_ylabel("val accuracy drop (pt), only this layer quantized")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune_command(
    source: str = typer.Argument(..., help="Finetune run folder (or model folder/spec with --data)."),
    out: Path = typer.Option(..., "--out", "-o"),
    max_drop: float = typer.Option(0.5, help="Accuracy budget in points (absolute), on the validation split."),
    method: str = typer.Option("static", help="Base method (static, weight-only, dynamic)."),
    bits: str = typer.Option("4,8", help="Candidate weight bit widths; float is always a candidate."),
    sensitivity_only: bool = typer.Option(False, help="Only write the per-layer sensitivity table and chart."),
    calib: int = typer.Option(8, help="Calibration batches."),
    data: str = typer.Option(None, help="Data spec (default: the run's)."),
) -> None:
    """Per-layer sensitivity, then the smallest per-layer precision mix within --max-drop (size objective)."""
    loaded, run = resolve_model(source)
    rd = run_data(source, loaded, run, data)
    splits, data, seed = rd.splits, rd.spec, rd.seed
    base = QuantConfig(method=method, calib_batches=calib)
    calib_batches = [x for x, _ in make_loader(splits.train, loaded, batch_size=32, shuffle=True, seed=seed)][:calib]
    val = list(make_loader(splits.val, loaded, batch_size=128))
    table = layer_sensitivity(loaded.model, base, calib_batches, val, bits=_bits(bits))
    rows = [asdict(r) for r in table]
    out.mkdir(parents=True, exist_ok=True)
    sensitivity_chart(rows, out / "sensitivity.png")
    worst = sorted(rows, key=lambda r: -r["accuracy_drop"])[:8]
    t = Table(title="most sensitive layers (validation split)")
    for col in ("layer", "bits", "acc drop pt", "logit SQNR dB"):
        t.add_column(col, justify="right")
    for r in worst:
        t.add_row(r["layer"], str(r["bits"]), f"{100 * r['accuracy_drop']:.2f}", f"{r['sqnr_db']:.1f}")
    console.print(t)
    result: dict[str, Any] = {"sensitivity": rows}
    if not sensitivity_only:
        # The solver predicts the drop as a sum of single-layer drops; errors compound, so verify on
        # the validation split and tighten the predicted budget until the measured drop fits.
        trials, predicted = [], max_drop / 100
        for _ in range(MAX_TRIALS):
            chosen = choose_bits(table, predicted)
            qm = quantize(loaded, mixed_config(base, chosen), calib_batches)
            val_cmp = compare_models(loaded.model, qm.model, val, len(splits.train.classes))
            trials.append({"predicted_budget_pt": 100 * predicted, "val_drop_pt": val_cmp["accuracy_drop_pt"],
                           "packed_bytes": qm.packed_weight_bytes()})
            console.print(f"trial {len(trials)}: predicted budget {100 * predicted:.3f} pt -> measured val drop "
                          f"{val_cmp['accuracy_drop_pt']:+.2f} pt, weights {qm.packed_weight_bytes() / 1e6:.2f} MB")
            if val_cmp["accuracy_drop_pt"] <= max_drop or predicted == 0:
                break
            predicted = 0.0 if predicted < 1e-4 else predicted / 2
        # Single-layer drops below the validation set's resolution read as zero, yet their noise adds
        # up; then raise the noisiest (lowest-SQNR) low-bit layers a quarter at a time.
        sqnr = {(r.layer, r.bits): r.sqnr_db for r in table}
        widths = sorted({r.bits for r in table})
        while val_cmp["accuracy_drop_pt"] > max_drop and len(trials) < 2 * MAX_TRIALS:
            low = sorted((layer for layer, b in chosen.items() if b != FLOAT and b < widths[-1]),
                         key=lambda layer: sqnr[(layer, chosen[layer])])
            if not low:
                break
            for layer in low[:max(1, len(low) // 4)]:
                chosen[layer] = widths[widths.index(chosen[layer]) + 1]
            qm = quantize(loaded, mixed_config(base, chosen), calib_batches)
            val_cmp = compare_models(loaded.model, qm.model, val, len(splits.train.classes))
            trials.append({"raised_noisiest": len(low[:max(1, len(low) // 4)]),
                           "val_drop_pt": val_cmp["accuracy_drop_pt"], "packed_bytes": qm.packed_weight_bytes()})
            console.print(f"trial {len(trials)}: raised the {trials[-1]['raised_noisiest']} noisiest low-bit layers "
                          f"-> val drop {val_cmp['accuracy_drop_pt']:+.2f} pt, "
                          f"weights {qm.packed_weight_bytes() / 1e6:.2f} MB")
        test_cmp = compare_models(loaded.model, qm.model, make_loader(splits.test, loaded, batch_size=128),
                                  len(splits.train.classes))
        save_quantized(qm, loaded, out)
        uniform = quantize(loaded, base, calib_batches)
        result.update(trials=trials, budget_met=val_cmp["accuracy_drop_pt"] <= max_drop, chosen_bits={k: ("float" if v == FLOAT else v) for k, v in chosen.items()},
                      val=val_cmp, test=test_cmp, packed_bytes=qm.packed_weight_bytes(),
                      uniform_8bit_packed_bytes=uniform.packed_weight_bytes())
        counts = {b: sum(1 for v in chosen.values() if v == b) for b in set(chosen.values())}
        mix = ', '.join(f"{n} layers at {'float' if b == FLOAT else f'{b}-bit'}" for b, n in counts.items())
        console.print(f"chosen: {mix}; "
                      f"val drop {val_cmp['accuracy_drop_pt']:+.2f} pt (budget {max_drop}), test accuracy "
                      f"{test_cmp['quantized']['accuracy']:.4f} (float {test_cmp['float']['accuracy']:.4f}); weights "
                      f"{qm.packed_weight_bytes() / 1e6:.2f} MB vs all-int8 {uniform.packed_weight_bytes() / 1e6:.2f} MB")
    write_summary(out, "tune", config={"source": source, "data": data, "max_drop_pt": max_drop, "base": base,
                                       "bits": bits, "sensitivity_only": sensitivity_only},
                  metrics=result)
    console.print(f"sensitivity chart: {out / 'sensitivity.png'}; summary.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
