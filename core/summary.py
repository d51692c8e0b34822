"""summary.json as a pure function of a run's results: what it achieved and what it cost.

The trainer hands over what it knows at its end (the validation eval records, the test metrics of a
completed run, the sizes of each task, the time and token counts, the parameter report) and stores the
``RunSummary`` this returns; nothing here trains, reads a file or looks at a clock, so tests build
summaries from hand-made records.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import RunConfig
from core.meter import Totals
from core.records import RunState, RunSummary, TaskSummary

PARAMETER_KEYS = ("trainable_params", "total_params", "trainable_percent", "layers")


@dataclass(frozen=True)
class TaskFacts:
    """What a task is in this run, whatever the run's outcome."""

    label_names: list[str]
    n_train: int
    n_validation: int
    n_test: int
    trained: bool  # its batches train the model (a frozen head's task is only evaluated)
    head_frozen: bool


def summarize(
    run_id: str,
    state: RunState,
    cfg: RunConfig,
    *,
    device: str,
    steps: int,
    total_steps: int,
    epochs: float,
    totals: Totals,
    parameters: dict,
    embedding_cache: bool,
    cached_bottom_layers: int,
    tasks: dict[str, TaskFacts],
    evals: list[dict],
    test: dict[str, dict] | None = None,
    early_stopped: dict | None = None,
) -> RunSummary:
    """The run's summary. ``evals``: metrics records (only ``kind == "eval"`` ones are read: the validation
    curve, and the training-sample scores of ``split == "train"``), in the order they were logged; ``test``:
    per task, ``evaluate.full_scores`` of a completed run, else None; ``parameters``:
    ``model.parameter_report`` of the final stage; ``early_stopped``: where and why early stopping ended
    the run (kept in the summary as ``early_stopped``), None if it ran its planned steps."""
    evals = [r for r in evals if r.get("kind") == "eval"]
    validation = [r for r in evals if r.get("split", "validation") == "validation"]  # old records have no split
    train = [r for r in evals if r.get("split") == "train"]
    return RunSummary(
        run_id=run_id,
        state=RunState(state).value,
        strategy=cfg.strategy,
        backbone=cfg.backbone,
        device=device,
        steps=steps,
        total_steps=total_steps,
        epochs=epochs,
        train_seconds=round(totals.train_seconds, 3),
        wall_seconds=round(totals.wall_seconds, 3),
        examples_seen=totals.examples_seen,
        tokens_seen=totals.tokens_seen,
        examples_per_second=totals.examples_per_second,
        tokens_per_second=totals.tokens_per_second,
        **{k: parameters[k] for k in PARAMETER_KEYS},
        embedding_cache=embedding_cache,
        cached_bottom_layers=cached_bottom_layers,
        tasks={
            name: task_summary(
                facts,
                [r for r in validation if r["task"] == name],
                test[name] if test else None,
                train_curve=[r for r in train if r["task"] == name],
            )
            for name, facts in tasks.items()
        },
        extra={
            **{k: v for k, v in parameters.items() if k not in PARAMETER_KEYS},
            **({"early_stopped": early_stopped} if early_stopped else {}),
        },
    )


def task_summary(
    facts: TaskFacts, curve: list[dict], test: dict | None, train_curve: list[dict] | None = None
) -> TaskSummary:
    """One task: the last, best and first points of its validation curve, its last training-sample
    accuracy, and its test metrics if any."""
    first, last = (curve[0], curve[-1]) if curve else (None, None)
    best = max(curve, key=lambda r: r["accuracy"]) if curve else None  # the earliest of equal bests
    summary = TaskSummary(
        label_names=facts.label_names,
        n_train=facts.n_train,
        n_validation=facts.n_validation,
        n_test=facts.n_test,
        trained=facts.trained,
        head_frozen=facts.head_frozen,
        val_accuracy=last["accuracy"] if last else None,
        val_macro_f1=last["macro_f1"] if last else None,
        best_val_accuracy=best["accuracy"] if best else None,
        best_val_step=best["step"] if best else None,
        initial_val_accuracy=first["accuracy"] if first else None,
        # How far the task moved from where it started: for a frozen head, the shared backbone's drift.
        val_accuracy_change=last["accuracy"] - first["accuracy"] if curve else None,
        train_accuracy=train_curve[-1]["accuracy"] if train_curve else None,
    )
    if test is not None:
        summary.test_accuracy = test["accuracy"]
        summary.test_macro_f1 = test["macro_f1"]
        summary.test_balanced_accuracy = test.get("balanced_accuracy")
        summary.test_loss = test["loss"]
        summary.per_class = test["per_class"]
        summary.confusion_matrix = test["confusion_matrix"]
    return summary
