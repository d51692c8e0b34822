"""Evaluation of one task's split: loss, accuracy, macro-F1, and (for test) per-class reports."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

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
def embed_split(model: MultiTaskModel, enc: Encoded, batch_size: int, pad_id: int, device: torch.device) -> torch.Tensor:
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


def score(logits: np.ndarray, labels: list[int], n_labels: int) -> dict:
    y = np.asarray(labels)
    pred = logits.argmax(1)
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=1).numpy()
    loss = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
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
