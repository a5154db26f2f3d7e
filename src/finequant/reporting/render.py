"""Render collected runs: ``report.html`` (self-contained, plots as base64 PNG) and ``report.md``."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from finequant.io import atomic_write_bytes, atomic_write_text
from finequant.reporting.collect import Collected, Variant, collect

CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em} th,td{border:1px solid #ddd;padding:.3em .6em}
th{background:#f4f6f8;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
figure{display:inline-block;width:48%;margin:0 1% 1em 0;vertical-align:top}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em} .muted{color:#777}
"""


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # run names are data: "$x$" must print as typed
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(6.4, 4.2))


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both cost (lower) and accuracy (higher), sorted by cost."""
    front, best = [], -1.0
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def tradeoff_plot(variants: list[Variant], attr: str, label: str, scale: float = 1.0,
                  title: str = "") -> bytes | None:
    pts = [(getattr(v, attr) * scale, 100 * v.accuracy, v.name) for v in variants
           if getattr(v, attr) is not None and v.accuracy is not None]
    if not pts:
        return None
    plt, (fig, ax) = _figure()
    for k, (x, y, name) in enumerate(sorted(pts)):
        ax.scatter(x, y, s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 if k % 2 else -10), fontsize=7)
    front = _pareto([(x, y) for x, y, _ in pts])
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", lw=1, label="Pareto front")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy vs {label.split(' (')[0]}" + (f" -- {title}" if title else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, plt)


def curves_plot(history: list[dict[str, Any]]) -> bytes:
    plt, (fig, ax) = _figure()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "s-", color="green", label="val accuracy")
    ax2.set_ylabel("val accuracy (%)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    ax.set_title("training curves")
    return _png(fig, plt)


def confusion_plot(matrix: list[list[int]], classes: list[str]) -> bytes:
    plt, (fig, ax) = _figure()
    ax.imshow(matrix, cmap="Blues")
    n = len(matrix)
    labels = classes if len(classes) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), labels, rotation=90 if n > 12 else 0, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    peak = max(max(r) for r in matrix) or 1
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                        color="white" if v > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test split)")
    return _png(fig, plt)


def sensitivity_plot(rows: list[dict[str, Any]], top: int = 25) -> bytes:
    plt, (fig, ax) = _figure()
    worst = sorted(rows, key=lambda r: -r["accuracy_drop"])[:top]
    names = [f"{r['layer']} ({r['bits']}b)" for r in worst]
    ax.barh(range(len(worst)), [100 * r["accuracy_drop"] for r in worst], color="#d62728")
    ax.set_yticks(range(len(worst)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("val accuracy drop (pt) with only this layer quantized")
    ax.set_title(f"per-layer sensitivity (top {len(worst)})")
    return _png(fig, plt)


def trials_plot(trials: list[dict[str, Any]], pareto: list[str], chosen: str) -> bytes:
    plt, (fig, ax) = _figure()
    for t in trials:
        marker = "*" if t["name"] == chosen else ("o" if t["name"] in pareto else "x")
        ax.scatter(t["latency_ms"], 100 * t["val_accuracy"], marker=marker, s=90 if marker == "*" else 35)
        ax.annotate(t["name"], (t["latency_ms"], 100 * t["val_accuracy"]), textcoords="offset points",
                    xytext=(4, 3), fontsize=6)
    ax.set_xlabel("latency, batch 1 (ms)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title("tuning trials (o Pareto front, * chosen, x dominated)")
    ax.grid(alpha=0.3)
    return _png(fig, plt)


def _fmt(v: float | None, pattern: str) -> str:
    return "-" if v is None else pattern.format(v)


def _variant_rows(variants: list[Variant]) -> list[list[str]]:
    return [[v.name, v.kind, v.backend or "-", _fmt(v.accuracy, "{:.4f}"),
             _fmt(None if v.size_bytes is None else v.size_bytes / 1e6, "{:.2f}"), _fmt(v.latency_ms, "{:.2f}")]
            for v in variants]


HEADER = ["variant", "kind", "backend", "test acc", "size MB", "latency ms (b1)"]


def write_report(paths: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Write ``out`` (HTML) and ``report.md`` next to it (with its images in ``report-assets/``)."""
    c = collect(paths)
    out = Path(out)
    assets = out.parent / "report-assets"
    images: list[tuple[str, str, bytes]] = []  # (section, caption, png)
    variants = sorted(c.variants.values(), key=lambda v: (v.kind != "float", v.name))
    groups: dict[str, list[Variant]] = {}
    for v in variants:  # one pair of plots per data set: accuracies of different tasks do not compare
        groups.setdefault(str(v.config.get("data") or "models"), []).append(v)
    for group, members in groups.items():
        for attr, label, scale in (("latency_ms", "latency, batch 1 (ms)", 1.0), ("size_bytes", "size (MB)", 1e-6)):
            png = tradeoff_plot(members, attr, label, scale, title=group if len(groups) > 1 else "")
            if png:
                images.append(("Trade-offs", f"accuracy vs {label}" + (f" ({group})" if len(groups) > 1 else ""),
                               png))
    for name, s in c.finetunes.items():
        if s.get("history"):
            images.append((f"Fine-tuning: {name}", "training curves", curves_plot(s["history"])))
        test = (s.get("metrics") or {}).get("test", {})
        if test.get("confusion_matrix"):
            classes = (s.get("config") or {}).get("classes") or []
            images.append((f"Fine-tuning: {name}", "confusion matrix",
                           confusion_plot(test["confusion_matrix"], classes)))
    for name, s in c.tunes.items():
        m = s.get("metrics") or {}
        if m.get("sensitivity"):
            images.append((f"Tuning: {name}", "per-layer sensitivity", sensitivity_plot(m["sensitivity"])))
        if m.get("trials"):
            images.append((f"Tuning: {name}", "trials", trials_plot(m["trials"], m.get("pareto", []),
                                                                     m.get("chosen", ""))))
    html_text = _html(c, variants, images)
    atomic_write_text(out, html_text)
    assets.mkdir(parents=True, exist_ok=True)
    md_images = []
    for i, (section, caption, png) in enumerate(images):
        path = assets / f"{i:02d}-{re.sub(r'[^a-z0-9]+', '-', (section + ' ' + caption).lower()).strip('-')}.png"
        atomic_write_bytes(path, png)
        md_images.append((section, caption, path.relative_to(out.parent)))
    atomic_write_text(out.parent / "report.md", _markdown(c, variants, md_images))
    return {"html": str(out), "markdown": str(out.parent / "report.md"), "variants": len(variants),
            "images": len(images)}


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    def cell(i: int, text: str) -> str:
        numeric = i > 0 and text[:1].isdigit()
        return f"<td class='{'n' if numeric else ''}'>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _tune_rows(c: Collected) -> list[list[str]]:
    rows = []
    for name, s in c.tunes.items():
        m = s.get("metrics") or {}
        for t in m.get("trials", []):
            rows.append([name, t["name"], f"{t['val_accuracy']:.4f}", f"{t['val_drop_pt']:+.2f}",
                         f"{t['latency_ms']:.2f}", f"{t['packed_bytes'] / 1e6:.2f}",
                         ("Pareto " if t["name"] in m.get("pareto", []) else "")
                         + ("chosen" if t["name"] == m.get("chosen") else "")])
    return rows


def _env_rows(env: dict[str, Any]) -> list[list[str]]:
    flat: list[list[str]] = []
    for k, v in env.items():
        if isinstance(v, dict):
            flat += [[f"{k}.{kk}", str(vv)] for kk, vv in v.items()]
        else:
            flat.append([k, str(v)])
    return flat


def _html(c: Collected, variants: list[Variant], images: list[tuple[str, str, bytes]]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>finequant report</title>",
             f"<style>{CSS}</style></head><body>", "<h1>finequant report</h1>",
             f"<p class='muted'>{len(variants)} variants from {len(c.sources)} summaries: "
             f"{html.escape(', '.join(sorted({str(Path(s).parent) for s in c.sources}))[:600])}</p>",
             "<h2>Variants</h2>", _table_html(HEADER, _variant_rows(variants))]
    section = None
    for sec, caption, png in images:
        if sec != section:
            parts.append(f"<h2>{html.escape(sec)}</h2>")
            section = sec
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption class='muted'>{html.escape(caption)}</figcaption></figure>")
        if sec.startswith("Tuning") and caption == "trials":
            parts.append(_table_html(["tune", "trial", "val acc", "drop pt", "latency ms", "size MB", ""],
                                     [r for r in _tune_rows(c) if r[0] == sec.split(": ", 1)[1]]))
    parts.append("<h2>Environment</h2>" + _table_html(["key", "value"], _env_rows(c.environment)))
    parts.append("<h2>Configs</h2>")
    for v in variants:
        parts.append(f"<details><summary>{html.escape(v.name)}</summary><pre>"
                     f"{html.escape(json.dumps(v.config, indent=2, default=str))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md(text: str) -> str:
    """Run data in Markdown: HTML-escaped (no live tags) and table-safe."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _markdown(c: Collected, variants: list[Variant], images: list[tuple[str, str, Path]]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows])

    lines = ["# finequant report", "", table(HEADER, _variant_rows(variants)), ""]
    for section, caption, path in images:
        lines += [f"## {_md(section)}: {_md(caption)}", "", f"![{_md(caption)}]({path.as_posix()})", ""]
    if c.tunes:
        lines += ["## Tuning trials", "", table(["tune", "trial", "val acc", "drop pt", "latency ms", "size MB", ""],
                                                _tune_rows(c)), ""]
    lines += ["## Environment", "", table(["key", "value"], _env_rows(c.environment)), ""]
    return "\n".join(lines)
