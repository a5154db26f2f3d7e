"""Read every ``summary.json`` under the given run folders into one set of variants and details.

A variant is one deployable model (float, quantized, tuned) with its test accuracy, size, latency
where measured, and config. Summaries of the same folder merge (a demo row, the quantize summary
in that folder, and bench rows that timed it), keyed by the folder's resolved path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finequant.errors import FinequantError
from finequant.summary import read_summary


@dataclass
class Variant:
    name: str
    path: str
    kind: str  # float, quantized, tuned
    accuracy: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    backend: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Collected:
    variants: dict[str, Variant] = field(default_factory=dict)  # key: resolved folder
    finetunes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> summary
    tunes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> summary (+ "_dir")
    environment: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def _key(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.parent if p.name == "model" else p)


def _name(folder: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            rel = folder.resolve().relative_to(root.resolve())
            return "/".join(filter(None, (root.name, *rel.parts)))
        except ValueError:
            continue
    return folder.name


def collect(paths: list[str | Path]) -> Collected:
    """Walk ``paths`` (run folders, or folders holding several) for summary.json files."""
    roots = [Path(p) for p in paths]
    missing = [str(p) for p in roots if not p.exists()]
    if missing:
        raise FinequantError(f"no such run folder: {', '.join(missing)}")
    found = sorted({f for root in roots for f in ([root / "summary.json"] if (root / "summary.json").is_file()
                                                   else []) + sorted(root.rglob("summary.json"))})
    if not found:
        raise FinequantError(f"no summary.json under {', '.join(map(str, roots))}: pass folders written by "
                             "finequant finetune/quantize/tune/bench/demo/run")
    c = Collected()
    demo_rows: list[dict[str, Any]] = []
    bench_rows: list[dict[str, Any]] = []
    for f in found:
        try:
            s = read_summary(f.parent)
        except ValueError as e:
            raise FinequantError(f"{f} is not valid JSON ({e}); rerun the step that wrote it") from e
        c.sources.append(str(f))
        c.environment = c.environment or s.get("environment", {})
        folder, cmd, m = f.parent, s.get("command"), s.get("metrics") or {}
        name = _name(folder, roots)
        if cmd == "finetune":
            c.finetunes[name] = s
            c.variants[_key(folder)] = Variant(f"{name} (fp32)", str(folder), "float",
                                               m.get("test", {}).get("accuracy"),
                                               (s.get("sizes") or {}).get("model_bytes"), config=s.get("config", {}))
        elif cmd == "quantize":
            c.variants[_key(folder)] = Variant(name, str(folder), "quantized", m["quantized"]["accuracy"],
                                               s["sizes"]["artifact_bytes"], backend="torch-sim",
                                               config=s.get("config", {}))
        elif cmd == "tune":
            c.tunes[name] = {**s, "_dir": str(folder)}
            if "test" in m:
                weights = folder / "quant.safetensors"
                c.variants[_key(folder)] = Variant(
                    f"{name} ({m.get('chosen', 'tuned')})", str(folder), "tuned", m["test"]["quantized"]["accuracy"],
                    weights.stat().st_size if weights.is_file() else m.get("packed_bytes"),
                    config={"chosen": m.get("chosen_config"), **(s.get("config") or {})})
        elif cmd == "demo":
            demo_rows += m.get("variants", [])
        elif cmd == "bench":
            bench_rows += [r for r in m.get("rows", []) if "p50_ms" in r and r.get("batch") == 1]
    for row in bench_rows:  # measured latency, batch 1, fastest backend per folder
        v = c.variants.get(_key(row["model"]))
        if v and (v.latency_ms is None or row["p50_ms"] < v.latency_ms):
            v.latency_ms, v.backend = row["p50_ms"], row["backend"]
    for row in demo_rows:  # the demo measured these side by side: its figures win
        v = c.variants.setdefault(_key(row["path"]), Variant(row["variant"], row["path"], "quantized"))
        v.name, v.accuracy, v.size_bytes = row["variant"], row["accuracy"], row["size_bytes"]
        v.backend = row.get("backend", v.backend)
        v.latency_ms = row.get("latency_ms", v.latency_ms)
    return c
