"""Predictions from a trained run: every task's label and class probabilities in one backbone pass."""

from __future__ import annotations

import time

import torch

from core.checkpoint import load_model
from core.store import RunStore


class PredictError(ValueError):
    pass


class Predictor:
    def __init__(self, model, tokenizer, meta: dict, device: torch.device, run_id: str | None = None) -> None:
        self.model, self.tokenizer, self.meta, self.device, self.run_id = model, tokenizer, meta, device, run_id
        self.max_length = int(meta.get("max_length", 128))
        self.model.eval()  # no dropout at prediction time

    @classmethod
    def from_run(cls, store: RunStore, run_id: str, device: str = "auto", int8: bool = False) -> Predictor:
        """``int8``: dynamic int8 quantization of the linear layers (CPU), allowed only where it agreed with
        full precision on at least 99.5% of the run's test labels (see ``int8_agreement``)."""
        store.existing_path(run_id)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        model, tokenizer, meta = load_model(store.checkpoint_dir(run_id), dev)
        predictor = cls(model, tokenizer, meta, dev, run_id)
        if int8:
            report = int8_agreement(store, run_id, predictor)
            if not report["allowed"]:
                raise PredictError(f"int8 prediction for {run_id} agrees with full precision on only "
                                   f"{100 * report['agreement']:.2f}% of its test set (< 99.5%): use full precision.")
            predictor = cls(quantize(model), tokenizer, meta, torch.device("cpu"), run_id)
        return predictor

    @property
    def label_names(self) -> dict[str, list[str]]:
        return self.model.label_names

    @torch.inference_mode()
    def probabilities(self, texts: list[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Per task, a (len(texts), n_labels) tensor of class probabilities."""
        cleaned = [t.strip() if isinstance(t, str) else "" for t in texts]
        empty = [i for i, t in enumerate(cleaned) if not t]
        if empty:
            raise PredictError(f"text {empty[0] + 1} of {len(texts)} is empty: type a sentence (empty lines are skipped in the UI).")
        out: dict[str, list[torch.Tensor]] = {t: [] for t in self.model.tasks}
        for start in range(0, len(cleaned), batch_size):
            enc = self.tokenizer(cleaned[start : start + batch_size], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            logits = self.model.predict_all(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            for task, value in logits.items():
                out[task].append(torch.softmax(value.float(), dim=-1).cpu())
        return {task: torch.cat(parts) for task, parts in out.items()}

    def predict(self, texts: list[str]) -> list[dict]:
        """[{text, tasks: {task: {label, probabilities: {label: p}}}}] in the order of ``texts``."""
        probs = self.probabilities(texts)
        results = []
        for i, text in enumerate(texts):
            tasks = {}
            for task, names in self.label_names.items():
                row = probs[task][i].tolist()
                tasks[task] = {"label": names[max(range(len(row)), key=row.__getitem__)],
                               "probabilities": dict(zip(names, row))}
            results.append({"text": text, "tasks": tasks})
        return results

    def timed_predict(self, texts: list[str]) -> tuple[list[dict], float]:
        tick = time.perf_counter()
        results = self.predict(texts)
        return results, time.perf_counter() - tick


def median_latency(predictors: list[Predictor], texts: list[str], repeats: int = 7) -> float:
    """Median seconds to get every task's prediction for ``texts`` from all ``predictors`` in turn."""
    for p in predictors:  # warm-up: first calls pay for allocation
        p.probabilities(texts)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        for p in predictors:
            p.probabilities(texts)
        times.append(time.perf_counter() - tick)
    return sorted(times)[len(times) // 2]


INT8_MIN_AGREEMENT = 0.995


def quantize(model):
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization prints a deprecation notice
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)


def int8_agreement(store: RunStore, run_id: str, predictor: Predictor | None = None) -> dict:
    """Share of test sentences (all tasks) where int8 and full precision predict the same label. Cached."""
    from core.data import load_task_data
    from core.store import read_json, write_json_atomic

    path = store.path(run_id) / "int8.json"
    cached = read_json(path)
    if cached:
        return cached
    predictor = predictor or Predictor.from_run(store, run_id, device="cpu")
    fast = Predictor(quantize(predictor.model), predictor.tokenizer, predictor.meta, torch.device("cpu"), run_id)
    cfg = store.read_config(run_id)
    same = total = 0
    for task in cfg.tasks:
        data = load_task_data(task.name, task.dataset, text_column=task.text_column, label_column=task.label_column,
                              split_seed=cfg.split_seed, max_eval_examples=cfg.max_eval_examples)
        full, small = predictor.probabilities(data.test.texts), fast.probabilities(data.test.texts)
        same += int((full[task.name].argmax(1) == small[task.name].argmax(1)).sum())
        total += len(data.test)
    report = {"agreement": same / total, "n": total, "allowed": same / total >= INT8_MIN_AGREEMENT}
    write_json_atomic(path, report)
    return report
