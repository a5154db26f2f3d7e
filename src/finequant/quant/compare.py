"""Float vs quantized on the same data: accuracy of each, top-1 agreement and logit SQNR."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from finequant.models.base import forward
from finequant.quant.affine import sqnr_db
from finequant.train.metrics import confusion, metrics_from_confusion


@torch.no_grad()
def compare_models(reference: nn.Module, candidate: nn.Module, loader: DataLoader, num_classes: int
                   ) -> dict[str, Any]:
    """One pass over ``loader`` with both models (both in eval mode)."""
    reference.eval()
    candidate.eval()
    ref_logits, cand_logits, labels = [], [], []
    for inputs, y in loader:
        ref_logits.append(forward(reference, inputs).float())
        cand_logits.append(forward(candidate, inputs).float())
        labels.append(y)
    r, c, y = torch.cat(ref_logits), torch.cat(cand_logits), torch.cat(labels)
    ref_m = metrics_from_confusion(confusion(r.argmax(1), y, num_classes))
    cand_m = metrics_from_confusion(confusion(c.argmax(1), y, num_classes))
    return {
        "float": {k: ref_m[k] for k in ("accuracy", "macro_f1")},
        "quantized": {k: cand_m[k] for k in ("accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix")},
        "accuracy_drop_pt": 100 * (ref_m["accuracy"] - cand_m["accuracy"]),
        "top1_agreement": float((r.argmax(1) == c.argmax(1)).float().mean()),
        "logits_sqnr_db": sqnr_db(r, c),
        "logits_cosine": float(torch.nn.functional.cosine_similarity(r, c).mean()),
        "samples": len(y),
    }
