"""Evaluation of one task's split: loss, accuracy, macro-F1, balanced accuracy, per-class recall, and (for
test) per-class reports."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from core.batching import Encoded, collate, eval_batches
from core.model import MultiTaskModel


@torch.inference_mode()
def predict_logits(
    model: MultiTaskModel, enc: Encoded, task: str, batch_size: int, pad_id: int, device: torch.device
) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = np.zeros((len(enc), len(model.label_names[task])), dtype=np.float32)
    for idx in eval_batches(enc.lengths(), batch_size):
        ids, mask, _, _ = collate(enc, idx, pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids.to(device), mask.to(device), task)
        out[idx] = logits.float().cpu().numpy()
    model.train(was_training)
    return out


@torch.inference_mode()
def embed_split(
    model: MultiTaskModel, enc: Encoded, batch_size: int, pad_id: int, device: torch.device
) -> torch.Tensor:
    """Pooled sentence embeddings of a whole split, in evaluation mode (what a frozen backbone gives)."""
    was_training = model.training
    model.eval()
    out = torch.zeros((len(enc), model.backbone.config.hidden_size), dtype=torch.float32)
    for idx in eval_batches(enc.lengths(), batch_size):
        ids, mask, _, _ = collate(enc, idx, pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out[idx] = model.embed(ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return out


@torch.inference_mode()
def head_logits(model: MultiTaskModel, task: str, embeddings: torch.Tensor, device: torch.device) -> np.ndarray:
    head = model.heads[task]
    was_training = head.training
    head.eval()
    logits = head(embeddings.to(device)).float().cpu().numpy()
    head.train(was_training)
    return logits


def score(logits: np.ndarray, labels: list[int], label_names: list[str]) -> dict:
    """Loss, accuracy, macro-F1, balanced accuracy (mean per-class recall) and each class's recall.

    Balanced accuracy averages over the classes present in ``labels`` (sklearn's rule); ``recall`` names
    every class, 0.0 for one absent from ``labels``."""
    y = np.asarray(labels)
    pred = logits.argmax(1)
    ids = list(range(len(label_names)))
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=1).numpy()
    loss = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    recall = recall_score(y, pred, labels=ids, average=None, zero_division=0) if len(y) else np.zeros(len(ids))
    present = np.isin(ids, y)
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=ids, zero_division=0)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": {name: float(r) for name, r in zip(label_names, recall)},
    }


def full_report(logits: np.ndarray, labels: list[int], label_names: list[str]) -> dict:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true, columns: predicted)."""
    y = np.asarray(labels)
    pred = logits.argmax(1)
    ids = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(label_names)
    }
    return {"per_class": per_class, "confusion_matrix": confusion_matrix(y, pred, labels=ids).tolist()}


def full_scores(logits: np.ndarray, labels: list[int], label_names: list[str]) -> dict:
    """What a completed run reports on a test split: the scores plus per-class figures and confusion matrix."""
    return {**score(logits, labels, label_names), **full_report(logits, labels, label_names)}
