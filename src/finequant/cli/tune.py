"""``finequant tune``: per-layer sensitivity, then an accuracy-aware search (method, observer,
granularity, bits, advanced PTQ, per-layer float fallback, mixed precision) for the fastest or
smallest model within an accuracy budget, measured on the validation split and reported on the test
split. Trials and the sensitivity table are cached in the output folder: a rerun resumes."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.runs import resolve_model, run_data
from finequant.data import make_loader
from finequant.io import cached_json
from finequant.quant import QuantConfig, quantize
from finequant.quant.artifact import save_quantized
from finequant.quant.compare import compare_models
from finequant.summary import write_summary
from finequant.train import evaluate as evaluate_model
from finequant.tune import layer_sensitivity, leave_one_out
from finequant.tune.search import OBJECTIVES, Trial, candidates, choose, config_key, latency_ms, pareto_front, search
from finequant.tune.sensitivity import Sensitivity

console = Console()


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
    max_drop: float = typer.Option(0.5, help="Accuracy budget in points on the validation split."),
    relative: bool = typer.Option(False, help="Read --max-drop as percent of the float accuracy."),
    objective: str = typer.Option("latency", help=f"What to minimize within the budget: {', '.join(OBJECTIVES)}."),
    backend: str = typer.Option("onnxruntime", help="Where latency is measured: onnxruntime (int8) or torch-sim."),
    method: str = typer.Option("static", help="Base method the trials vary (static; dynamic for transformers)."),
    budget_trials: int = typer.Option(12, help="Most trials to run."),
    bits: str = typer.Option("4,8", help="Candidate weight bit widths for sensitivity and mixed precision."),
    sensitivity_only: bool = typer.Option(False, help="Only write the per-layer sensitivity table and chart."),
    leave_one_out_: bool = typer.Option(False, "--leave-one-out", help="Also measure all-but-one-layer accuracy."),
    calib: int = typer.Option(8, help="Calibration batches."),
    data: str = typer.Option(None, help="Data spec (default: the run's)."),
) -> None:
    """Sensitivity, then the fastest (or smallest) quantized model within --max-drop, with the Pareto front."""
    torch.manual_seed(0)
    loaded, run = resolve_model(source)
    rd = run_data(source, loaded, run, data)
    splits, data, seed = rd.splits, rd.spec, rd.seed
    base = QuantConfig(method=method, calib_batches=calib)
    calib_batches = [x for x, _ in make_loader(splits.train, loaded, batch_size=32, shuffle=True, seed=seed)][:calib]
    val = list(make_loader(splits.val, loaded, batch_size=128))
    n_classes = len(splits.train.classes)
    out.mkdir(parents=True, exist_ok=True)
    context = {"source": str(Path(source).resolve()), "data": data, "seed": seed, "calib": calib, "backend": backend}
    key = config_key(base, {**context, "bits": bits})
    result: dict[str, Any] = {}

    def sensitivity() -> list[Sensitivity]:
        """Computed on first need (size objective, float fallback, --sensitivity-only), then cached."""
        if "sensitivity" not in result:
            result["sensitivity"] = cached_json(out / f"sensitivity-{key}.json", lambda: [
                asdict(r) for r in layer_sensitivity(loaded.model, base, calib_batches, val, bits=_bits(bits))])[0]
            sensitivity_chart(result["sensitivity"], out / "sensitivity.png")
            _print_sensitivity(result["sensitivity"])
        return [Sensitivity(**r) for r in result["sensitivity"]]

    if sensitivity_only or objective == "size":
        sensitivity()
    if leave_one_out_:
        result["leave_one_out"] = cached_json(out / f"leave-one-out-{key}.json",
                                              lambda: leave_one_out(loaded.model, base, calib_batches, val,
                                                                    bits=_bits(bits)))[0]
    if not sensitivity_only:
        float_acc = evaluate_model(loaded.model, val, n_classes, "cpu")["accuracy"]
        allowed_pt = max_drop * float_acc if relative else max_drop
        example = saved_example(loaded, val)

        def evaluate(trial: Trial) -> dict[str, Any]:
            t0 = time.perf_counter()
            qm = quantize(loaded, trial.config, calib_batches)
            cmp = compare_models(loaded.model, qm.model, val, n_classes)
            return {"val_accuracy": cmp["quantized"]["accuracy"], "val_drop_pt": cmp["accuracy_drop_pt"],
                    "packed_bytes": qm.packed_weight_bytes(),
                    # text models are timed in the simulation (tune exports only static image models)
                    "latency_ms": latency_ms(qm, example, backend if loaded.task == "image" else "torch-sim"),
                    "seconds": time.perf_counter() - t0}

        def run_trials(trials: list[Trial], budget: int) -> list[dict[str, Any]]:
            return search(trials, evaluate, within_budget=lambda r: r["val_drop_pt"] <= allowed_pt,
                          budget_trials=budget, cache_dir=out / "trials", context=context, log=console.print)

        # Whole-model variants need no sensitivity table; only if none fits is it computed, to rank
        # layers for float fallback (it costs one quantize + validation pass per layer and bit width).
        table = [Sensitivity(**r) for r in result.get("sensitivity", [])]
        trials = run_trials(candidates(objective, table, allowed_pt, base), budget_trials)
        if not any(t["within_budget"] for t in trials) and len(trials) < budget_trials and not table:
            tried = {t["name"] for t in trials}
            rest = [t for t in candidates(objective, sensitivity(), allowed_pt, base) if t.name not in tried]
            trials += run_trials(rest, budget_trials - len(trials))
        best = choose(trials, objective)
        qm = quantize(loaded, QuantConfig.from_dict(best["config"]), calib_batches)
        test_cmp = compare_models(loaded.model, qm.model, make_loader(splits.test, loaded, batch_size=128), n_classes)
        save_quantized(qm, loaded, out)
        front = pareto_front(trials)
        _print_trials(trials, front, best["name"])
        result.update(objective=objective, backend=backend, allowed_drop_pt=allowed_pt, float_val_accuracy=float_acc,
                      trials=trials, pareto=front, chosen=best["name"], chosen_config=best["config"],
                      budget_met=best["within_budget"], test=test_cmp, packed_bytes=qm.packed_weight_bytes())
        console.print(f"chosen: {best['name']} -- val drop {best['val_drop_pt']:+.2f} pt (budget {allowed_pt:.2f}), "
                      f"{best['latency_ms']:.2f} ms on {backend}, {best['packed_bytes'] / 1e6:.2f} MB; test accuracy "
                      f"{test_cmp['quantized']['accuracy']:.4f} (float {test_cmp['float']['accuracy']:.4f})")
    write_summary(out, "tune", config={"source": source, "data": data, "max_drop": max_drop, "relative": relative,
                                       "objective": objective, "backend": backend, "method": method,
                                       "budget_trials": budget_trials,
                                       "bits": bits, "calib": calib, "sensitivity_only": sensitivity_only},
                  metrics=result)
    console.print(f"sensitivity chart: {out / 'sensitivity.png'}; summary.json in {out}")


def saved_example(loaded: Any, val: list[Any]) -> Any:
    """The latency probe: a batch-1 image for image models, the first validation batch for text."""
    if loaded.task == "image":
        from finequant.runtime.backends import example_input

        return example_input(loaded)
    return val[0][0]


def _print_sensitivity(rows: list[dict[str, Any]]) -> None:
    t = Table(title="most sensitive layers (validation split)")
    for col in ("layer", "bits", "acc drop pt", "logit SQNR dB"):
        t.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: -r["accuracy_drop"])[:8]:
        t.add_row(r["layer"], str(r["bits"]), f"{100 * r['accuracy_drop']:.2f}", f"{r['sqnr_db']:.1f}")
    console.print(t)


def _print_trials(trials: list[dict[str, Any]], front: list[str], chosen: str) -> None:
    t = Table(title="trials (validation split); * = Pareto front (accuracy, latency, size)")
    for col in ("trial", "val acc", "drop pt", "latency ms", "size MB", ""):
        t.add_column(col, justify="right")
    for r in trials:
        mark = ("*" if r["name"] in front else "") + (" chosen" if r["name"] == chosen else "")
        t.add_row(r["name"], f"{r['val_accuracy']:.4f}", f"{r['val_drop_pt']:+.2f}", f"{r['latency_ms']:.2f}",
                  f"{r['packed_bytes'] / 1e6:.2f}", mark)
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
