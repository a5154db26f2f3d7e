"""``finequant data inspect``: class counts and the problems a user should fix before training."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from finequant.data.base import LabeledData
from finequant.data.sources import file_digest

IMBALANCE_RATIO = 3.0  # largest / smallest class above this is flagged


def inspect_data(data: LabeledData) -> dict[str, Any]:
    """Counts per class plus flagged problems: empty classes, unreadable files, duplicates, imbalance."""
    counts = data.class_counts()
    problems: list[str] = list(data.warnings)
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        problems.append(f"empty class(es): {empty}")
    if len(counts) < 2:
        problems.append("fewer than two classes")
    seen: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(data.items):
        seen[file_digest(item)].append(i)
    dups = [idx for idx in seen.values() if len(idx) > 1]
    if dups:
        conflicting = sum(1 for idx in dups if len({int(data.labels[i]) for i in idx}) > 1)
        example = ", ".join(str(data.items[i])[:60] for i in dups[0][:2])
        problems.append(f"{sum(len(d) - 1 for d in dups)} duplicate item(s) in {len(dups)} group(s), "
                        f"{conflicting} with conflicting labels (e.g. {example})")
    nonzero = [n for n in counts.values() if n > 0]
    ratio = max(nonzero) / min(nonzero) if nonzero else 0.0
    if ratio > IMBALANCE_RATIO:
        problems.append(f"label imbalance: largest/smallest class = {ratio:.1f} "
                        "(consider class weights or a balanced sampler)")
    return {"source": data.source, "kind": data.kind, "samples": len(data), "classes": len(counts),
            "class_counts": counts, "imbalance_ratio": round(ratio, 3), "problems": problems}
