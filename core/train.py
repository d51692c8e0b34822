"""The training engine: one run, read from and written to the run store.

``train_run(store, run_id)`` is the whole life of a run inside its worker process:

    train_run         the run becomes running; it becomes stopped or failed here if a signal or an error ends it
      Trainer(...)    setup, complete when it returns: config, device and seeds, data (class_ratio on the
                      training split), model (build_model), augmented training copies, tokens (each a
                      ``progress.phase`` in status.json), strategy, step plan, loss (class and task weights),
                      frozen-layer caches, optimizer, and on resume the checkpoint
      .run()          the loop: stop check, next batch, unfreeze stage, step, log, evaluate (and maybe stop
                      early), checkpoint, progress; then the ending: test metrics and predictions, final
                      checkpoint, summary.json, completed
                      (or, after a STOP flag: a checkpoint to resume from, summary.json, stopped)

``resume=True`` continues from the last checkpoint: weights, optimizer, scheduler, RNG and learned loss weights
come back, the metrics logged after it are dropped, and the deterministic batch schedule (core.batching) skips
what was already done, so the curves continue without gap or repeat. Time and token counts live in a
``core.meter.Meter``; summary.json is ``core.summary.summarize`` of the run's results.

Metrics records (metrics.jsonl), each with step, epoch and wall_seconds:
    eval          split (validation, or train: the fixed training sample), task, loss, accuracy, macro_f1,
                  balanced_accuracy, recall {label: value}
    train         task, mean loss of the window, lr           throughput   examples and tokens per second
    unfreeze      gradual_unfreeze's stages                   schedule     curriculum: weights {task: value}
    loss_weights  inverse_size / uncertainty: task, weight (and log_variance when learned)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core import checkpoint as ckpt
from core import cpu_dropout
from core.augment import EmbeddingNeighbours, augment_train
from core.backbones import load_backbone, load_tokenizer
from core.batching import Encoded, Schedule, collate, encode
from core.config import EVALS_PER_RUN, RunConfig, check_against_backbone
from core.data import TaskData, load_task_data
from core.errors import ConfigError, user_message
from core.evaluate import full_scores, predict_logits, score
from core.features import FrozenFeatures, status_progress
from core.imbalance import TaskLoss, class_weights
from core.meter import Meter, Totals
from core.model import MultiTaskModel, format_parameter_line, group_of, num_backbone_layers, parameter_report
from core.records import Progress, RunState, RunSummary
from core.runtime import (
    StopRequested,
    close_logger,
    create_time,
    pick_device,
    run_logger,
    seed_everything,
    set_frozen_eval,
)
from core.store import RunStore
from core.strategies import apply_strategy, frozen_head_tasks, get_strategy, lora_settings, prepare_backbone
from core.summary import TaskFacts, summarize

STATUS_EVERY_SECONDS = 2.0
LOG_VARIANCES_KEY = "loss_log_variances"  # learned uncertainty weights, in the checkpoint and its train state
TRAIN_SAMPLE_STREAM = 7  # the training sample's generator: [split_seed, 7], apart from the split's own draws
STARTABLE = {RunState.QUEUED, RunState.RUNNING, RunState.STOPPED, RunState.FAILED}  # every state that may train


def train_run(store: RunStore, run_id: str, *, resume: bool = False, show_progress: bool = False) -> RunState:
    """Train one run to completion (or until stopped); returns its final state."""
    store.existing_path(run_id)  # an unknown run is RunNotFound, before anything is written
    previous = store.read_status(run_id)
    store.transition(
        run_id,
        RunState.RUNNING,
        expect=STARTABLE,
        pid=os.getpid(),
        pid_create_time=create_time(),
        host=socket.gethostname(),
        error=None,
        started_at=previous.started_at if resume and previous.started_at else time.time(),
        finished_at=None,
    )
    logger = run_logger(store.log_path(run_id))
    try:
        if resume:
            store.clear_stop(run_id)  # the flag that stopped it last time
        return Trainer(store, run_id, logger, resume=resume).run(show_progress=show_progress)
    except StopRequested as exc:  # SIGTERM: the last periodic checkpoint is what is kept
        logger.info("stopped: %s", exc)
        _end_unless_recorded(store, run_id, RunState.STOPPED, note=str(exc))
        store.clear_stop(run_id)
        return RunState.STOPPED
    except Exception as exc:
        logger.exception("run failed")
        _end_unless_recorded(store, run_id, RunState.FAILED, error=f"{user_message(exc)} (details in train.log)")
        raise
    finally:
        close_logger(logger)


def _end_unless_recorded(store: RunStore, run_id: str, state: RunState, **fields) -> None:
    """How a signal or an error ended the run, unless the run recorded its own end just before it."""
    current = store.state(run_id)  # None: a damaged status.json, which may always become failed
    if current == RunState.RUNNING or (current is None and state == RunState.FAILED):
        store.transition(run_id, state, finished_at=time.time(), **fields)


@dataclass
class TaskState:
    """One task of the run: its data and its splits, tokenized once (``train_sample``: the fixed sample of
    original training examples scored at each evaluation, when ``train_eval_examples`` asks for it)."""

    data: TaskData
    train: Encoded
    validation: Encoded
    test: Encoded
    train_sample: Encoded | None = None

    @classmethod
    def tokenize(cls, data: TaskData, tokenizer, max_length: int) -> TaskState:
        splits = (data.train, data.validation, data.test)
        return cls(data, *(encode(tokenizer, s.texts, s.labels, max_length) for s in splits))

    def splits(self) -> dict[str, Encoded]:
        named = {"train": self.train, "validation": self.validation, "test": self.test}
        return {**named, "train_sample": self.train_sample} if self.train_sample is not None else named


class Trainer:
    """A run ready to train: ``__init__`` does the whole setup, ``run`` the loop and its ending.

    The run must be running in the store (``train_run`` puts it there); the ending moves it on."""

    def __init__(self, store: RunStore, run_id: str, log: logging.Logger, *, resume: bool = False) -> None:
        started = time.time()  # the wall clock counts the setup too
        self.store, self.run_id, self.log = store, run_id, log
        self.cfg = cfg = store.read_config(run_id).validate()
        self.ckpt_dir = store.checkpoint_dir(run_id)
        self.device = pick_device(cfg.device)
        seed_everything(cfg.seed)
        log.info(
            "run %s: strategy=%s backbone=%s device=%s torch_threads=%d",
            run_id, cfg.strategy, cfg.backbone, self.device, torch.get_num_threads(),
        )  # fmt: skip

        # Data and model: the heads' sizes come from the data's label names; augmentation needs the model.
        self._phase("loading data", 0, len(cfg.tasks))
        datasets = load_datasets(cfg)
        built = build_model(cfg, store, {name: d.label_names for name, d in datasets.items()}, log)
        self.model, self.tokenizer, self.lora, self.delta = built.model, built.tokenizer, built.lora, built.delta
        check_against_backbone(cfg, self.model.backbone.config)  # max_length within its positions, k within layers
        self.pad_id = self.tokenizer.pad_token_id or 0
        originals = {name: len(d.train) for name, d in datasets.items()}  # augmented copies come after these
        datasets = self._augment(datasets)
        self.tasks = self._tokenize(datasets, originals)

        # What trains: the strategy's final stage (a staged one starts smaller, see _update_stage).
        apply_strategy(self.model, cfg)
        self.report = parameter_report(self.model)
        log.info(format_parameter_line(self.report))
        self.trained_names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        frozen_heads = set(frozen_head_tasks(cfg)) if not cfg.train_frozen_head_tasks else set()
        self.trained_tasks = [t for t in self.tasks if t not in frozen_heads] if self.trained_names else []
        trained = {t: self.tasks[t] for t in self.trained_tasks}
        self.plan = StepPlan.for_run(cfg, trained)
        self.loss = task_loss(cfg, trained)
        self.staged = get_strategy(cfg.strategy).staged

        # Where it trains: the device, cached frozen layers, the optimizer.
        self.model.to(self.device)
        self.loss.to(self.device)
        if self.device.type == "cpu":  # masks from 16 random bits (core/cpu_dropout.py)
            log.info("CPU dropout: %s", cpu_dropout.use_fast_dropout(self.model))
        encoded = {t: ts.splits() for t, ts in self.tasks.items()}
        reusable = not cfg.init_from and not self.staged and not self.lora
        self.features = FrozenFeatures(
            self.model,
            encoded,
            cfg,
            self.trained_names,
            reusable,
            store.cache_dir(),
            self.device,
            self.pad_id,
            log,
            on_progress=status_progress(store, run_id),
        )
        self.optimizer, self.scheduler = build_optimizer(
            self.model, cfg, self.trained_names, self.plan.total_steps, extra_params=list(self.loss.parameters())
        )

        # Where it starts: step 0, or the checkpoint of a resumed run.
        self.step, self.meter = 0, Meter(self.trained_tasks, started=started)
        self.val_history: list[tuple[int, float]] = []  # (step, mean validation accuracy): early stopping
        if resume:
            self.step, self.meter = self._restore()
        self.stage: int | None = None
        self.in_train_mode = False  # dropout on where the model trains, off in frozen modules: set before a step
        self.trained_params: list[torch.nn.Parameter] = []  # what gradient clipping sees: the current stage's
        self.train_labels = {t: torch.as_tensor(ts.train.labels, dtype=torch.long) for t, ts in self.tasks.items()}
        self._update_stage()
        store.update_status(
            run_id,
            progress=self._progress(),
            trainable_params=self.report["trainable_params"],
            total_params=self.report["total_params"],
        )

    # -- setup phases -----------------------------------------------------------------------------
    def _phase(self, phase: str, done: int, total: int) -> None:
        """A setup phase in the run's status, so a long tokenization or augmentation shows as progress."""
        self.store.update_status(self.run_id, progress=Progress(phase=phase, phase_done=done, phase_total=total))

    def _augment(self, datasets: dict[str, TaskData]) -> dict[str, TaskData]:
        """Augmented copies of each asking task's TRAINING split (core.augment), seeded by the run's seed."""
        asking = [t for t in self.cfg.tasks if t.augment != "none"]
        neighbours = None
        for i, task in enumerate(asking):
            self._phase("augmenting", i, len(asking))
            if task.augment != "eda" and neighbours is None:  # the backbone's own input-embedding table
                neighbours = EmbeddingNeighbours.from_model(self.model, self.tokenizer)
            datasets[task.name] = augment_train(
                datasets[task.name],
                task.augment_copies,
                self.cfg.seed,
                method=task.augment,
                neighbour_source=neighbours,
                alpha=task.augment_alpha,
            )
            self.log.info(
                "task %s: %d training examples after %s augmentation",
                task.name,
                len(datasets[task.name].train),
                task.augment,
            )
        return datasets

    def _tokenize(self, datasets: dict[str, TaskData], originals: dict[str, int]) -> dict[str, TaskState]:
        cfg, tasks = self.cfg, {}
        for i, (name, data) in enumerate(datasets.items()):
            self._phase("tokenizing", i, len(datasets))
            state = TaskState.tokenize(data, self.tokenizer, cfg.max_length)
            if cfg.train_eval_examples:
                state.train_sample = state.train.subset(
                    train_sample(originals[name], cfg.train_eval_examples, cfg.split_seed)
                )
            tasks[name] = state
            self.log.info("task %s: %s", name, data.summary())
        self._phase("tokenizing", len(datasets), len(datasets))
        return tasks

    def _restore(self) -> tuple[int, Meter]:
        """Load the checkpoint's weights, optimizer, scheduler, RNG and learned loss weights; returns its step
        and counts. The early-stopping history is rebuilt from the evaluations kept in the metrics."""
        meta = ckpt.read_checkpoint_meta(self.ckpt_dir)
        self.model.load_state_dict(ckpt.load_weights(self.ckpt_dir), strict=meta["weights"] == "full")
        info = ckpt.load_train_state(self.ckpt_dir, self.optimizer, self.scheduler) if self.optimizer else {}
        saved_log_vars = info.get(LOG_VARIANCES_KEY, meta.get(LOG_VARIANCES_KEY))
        if self.loss.uncertainty is not None and saved_log_vars:
            self.loss.load_log_variances(saved_log_vars)
        step = int(info.get("step", meta.get("step", 0)))
        self.store.truncate_metrics_after(self.run_id, step)
        self.val_history = validation_history(self.store.read_metrics(self.run_id), self.trained_tasks, self.plan)
        self.log.info("resumed at step %d of %d", step, self.plan.total_steps)
        return step, Meter.resumed(self.trained_tasks, Totals.from_dict(info))

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, show_progress: bool = False) -> RunState:
        """Train from the current step to the last (or to a stop request, or to early stopping); returns the
        run's final state."""
        cfg, plan = self.cfg, self.plan
        if self.step == 0:
            self._evaluate()  # the starting point of every curve
            self._log_weights()
        last_status, early_stop = time.time(), None
        with self._progress_bar(show_progress) as bar, self._loop_threads():
            while self.step < plan.total_steps and not self.store.stop_requested(self.run_id):
                task, idx = plan.batch(self.step)
                self._update_stage()
                tick = time.perf_counter()
                loss, n_tokens = self._train_step(task, idx)
                self.meter.add(task, loss, len(idx), n_tokens, time.perf_counter() - tick)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every_steps == 0 or self.step == plan.total_steps:
                    lr = self.scheduler.get_last_lr()[0]
                    self.store.append_metrics(self.run_id, *self.meter.flush(self._position(), lr))
                    self._log_weights()
                if self.step < plan.total_steps:  # the last step's evaluation and checkpoint are the ending's
                    if self.step % plan.eval_every == 0:
                        self._evaluate()
                        early_stop = self._early_stop()
                        if early_stop:
                            break
                    if self.step % cfg.checkpoint_every_steps == 0:
                        self._save(with_train_state=True)
                if time.time() - last_status > STATUS_EVERY_SECONDS:
                    self.store.update_status(self.run_id, progress=self._progress())
                    last_status = time.time()
        if early_stop:
            return self._finish_completed(early_stop)
        if self.step < plan.total_steps:  # the loop left early: someone asked the run to stop
            return self._finish_stopped()
        return self._finish_completed()

    def _train_step(self, task: str, idx: list[int]) -> tuple[float, int]:
        """One optimizer step on one task's batch; returns its (unweighted) loss and its real token count."""
        if not self.in_train_mode:  # walking every module costs more than a head's whole step: only after a change
            self.model.train()
            set_frozen_eval(self.model)
            self.trained_params = [p for p in self.model.parameters() if p.requires_grad]
            self.in_train_mode = True
        if self.features.active:
            logits, n_tokens = self.features.train_logits(task, idx)
            labels = self.train_labels[task][idx].to(self.device)
        else:
            ids, mask, labels, n_tokens = collate(self.tasks[task].train, idx, self.pad_id)
            ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self.model(ids, mask, task)
        loss, weighted = self.loss(task, logits.float(), labels)
        weighted.backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trained_params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), n_tokens

    def _log_weights(self) -> None:
        """The curves a weighting or a curriculum draws: task loss weights, and the curriculum's task weights."""
        if not self.trained_tasks:
            return
        pos = self._position()
        records = self.loss.records(pos) if self.cfg.loss_weighting != "fixed" else []
        if self.plan.schedule.curriculum and self.step < self.plan.total_steps:
            records.append({"kind": "schedule", **pos, "weights": self.plan.schedule.task_weights(self.step)})
        if records:
            self.store.append_metrics(self.run_id, *records)

    def _early_stop(self) -> dict | None:
        """Early stopping: where and why, once ``early_stopping_patience`` evaluations in a row have not beaten
        the best mean validation accuracy of the trained tasks; None to go on."""
        patience = self.cfg.early_stopping_patience
        if not patience or not self.trained_tasks:
            return None
        since, best_step, best = evaluations_since_best(self.val_history)
        if since < patience:
            return None
        self.log.info("early stopping at step %d: no better validation accuracy since step %d", self.step, best_step)
        return {"step": self.step, "best_step": best_step, "best_mean_val_accuracy": best, "patience": patience}

    def _update_stage(self) -> None:
        """gradual_unfreeze: unfreeze one more layer from the top every ``unfreeze_every_steps``."""
        if not self.staged:
            return
        every = self.cfg.unfreeze_every_steps or max(1, self.plan.steps_per_epoch)
        stage = self.step // every
        if stage != self.stage:
            apply_strategy(self.model, self.cfg, unfrozen_layers=stage)
            self.in_train_mode = False  # modes and the clipped parameters follow the new stage
            if self.stage is not None or self.step == 0:  # a resumed run re-enters its stage silently
                trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
                self.store.append_metrics(
                    self.run_id,
                    {"kind": "unfreeze", **self._position(), "unfrozen_layers": stage, "trainable_params": trainable},
                )
            self.stage = stage

    @contextlib.contextmanager
    def _loop_threads(self):
        """Heads on cached features: a step is a few small tensor ops, which a second thread only slows down
        (measured 1.46 against about 1 ms a step on 2 cores); one thread for the loop, the setting restored."""
        threads = torch.get_num_threads()
        if self.features.heads_only and threads > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _progress_bar(self, show: bool):
        if not show:
            return contextlib.nullcontext()
        from tqdm import tqdm

        return tqdm(total=self.plan.total_steps, initial=self.step, desc=self.run_id, unit="step", leave=False)

    # -- evaluation and records -------------------------------------------------------------------
    def _logits(self, task: str, split: str) -> np.ndarray:
        self.in_train_mode = False  # evaluation leaves the model in eval mode
        if self.features.active:
            return self.features.logits(task, split)
        enc = getattr(self.tasks[task], split)
        return predict_logits(self.model, enc, task, self.cfg.eval_batch_size, self.pad_id, self.device)

    def _evaluate(self) -> None:
        """Validation scores of every task (trained or not), one record each, and the same on the training
        sample (``"split": "train"``) when the run scores one."""
        pos = self._position()
        records = []
        for split, enc_split in (("validation", "validation"), ("train", "train_sample")):
            for name, ts in self.tasks.items():
                enc = getattr(ts, enc_split)
                if enc is not None:
                    m = score(self._logits(name, enc_split), enc.labels, ts.data.label_names)
                    records.append({"kind": "eval", "split": split, **pos, "task": name, **m})
        self.store.append_metrics(self.run_id, *records)
        if self.trained_tasks and self.step % self.plan.eval_every == 0:
            accuracy = {r["task"]: r["accuracy"] for r in records if r["split"] == "validation"}
            self.val_history.append((self.step, float(np.mean([accuracy[t] for t in self.trained_tasks]))))

    def _position(self) -> dict:
        """Where the run is, as every metrics record says it."""
        epoch = round(self.plan.epoch(self.step), 4)
        return {"step": self.step, "epoch": epoch, "wall_seconds": round(self.meter.wall_seconds, 3)}

    def _progress(self) -> Progress:
        totals = self.meter.totals()
        return Progress(
            step=self.step,
            total_steps=self.plan.total_steps,
            epoch=self._position()["epoch"],
            eta_seconds=self.meter.eta_seconds(self.step, self.plan.total_steps),
            examples_per_second=totals.examples_per_second,
            tokens_per_second=totals.tokens_per_second,
        )

    def _save(self, with_train_state: bool) -> None:
        log_vars = self.loss.log_variances()
        learned = {LOG_VARIANCES_KEY: log_vars} if log_vars else {}
        ckpt.save_checkpoint(
            self.ckpt_dir,
            self.model,
            self.tokenizer,
            backbone=self.cfg.backbone,
            delta_names=self.trained_names if self.delta else None,
            step=self.step,
            extra={"max_length": self.cfg.max_length, "lora": self.lora, **learned},
        )
        if with_train_state and self.optimizer is not None:
            extra = {**self.meter.totals().to_dict(), **learned}
            ckpt.save_train_state(self.ckpt_dir, self.optimizer, self.scheduler, self.step, extra)

    # -- endings ----------------------------------------------------------------------------------
    def _finish_stopped(self) -> RunState:
        """A stop request: keep a checkpoint to resume from and a summary without test metrics."""
        self._save(with_train_state=True)
        self._evaluate()
        self._record_end(RunState.STOPPED, test=None)
        self.store.clear_stop(self.run_id)
        self.log.info("stopped at step %d; checkpoint kept", self.step)
        return RunState.STOPPED

    def _finish_completed(self, early_stop: dict | None = None) -> RunState:
        """The last step (or early stopping, which has just evaluated): a final evaluation, the test splits
        with every prediction, and the final weights (no resume state)."""
        if self.plan.total_steps > 0 and not early_stop:
            self._evaluate()
        test, predictions = {}, {}
        for name, ts in self.tasks.items():
            logits = self._logits(name, "test")
            test[name] = full_scores(logits, ts.test.labels, ts.data.label_names)
            predictions[name] = {"labels": list(ts.test.labels), "predictions": logits.argmax(1).tolist()}
        self.store.write_test_predictions(self.run_id, predictions)
        self._save(with_train_state=False)
        self._record_end(RunState.COMPLETED, test, early_stop)
        ckpt.drop_train_state(self.ckpt_dir)  # after the end is recorded: a kill before it still resumes
        self.log.info("completed: %s", {t: round(m["accuracy"], 4) for t, m in test.items()})
        return RunState.COMPLETED

    def _record_end(self, state: RunState, test: dict[str, dict] | None, early_stop: dict | None = None) -> None:
        """summary.json first, then the state: whoever sees the run finished finds its summary."""
        self.store.write_summary(self.run_id, self._summary(state, test, early_stop))
        progress = self._progress()
        self.store.transition(self.run_id, state, expect={RunState.RUNNING}, finished_at=time.time(), progress=progress)

    def _summary(self, state: RunState, test: dict[str, dict] | None, early_stop: dict | None = None) -> RunSummary:
        """The run's summary as of now: its eval records in the store, ``test`` metrics when completed."""
        frozen = set(frozen_head_tasks(self.cfg))
        facts = {
            name: TaskFacts(
                label_names=ts.data.label_names,
                n_train=len(ts.train),
                n_validation=len(ts.validation),
                n_test=len(ts.test),
                trained=name in self.trained_tasks,
                head_frozen=name in frozen,
            )
            for name, ts in self.tasks.items()
        }
        return summarize(
            self.run_id,
            state,
            self.cfg,
            device=str(self.device),
            steps=self.step,
            total_steps=self.plan.total_steps,
            epochs=self._position()["epoch"],
            totals=self.meter.totals(),
            parameters=self.report,
            embedding_cache=self.features.heads_only,
            cached_bottom_layers=self.features.lower_k,
            tasks=facts,
            evals=self.store.read_metrics(self.run_id),
            test=test,
            early_stopped=early_stop,
        )


# -- setup: each function returns what it builds ---------------------------------------------------------
def load_datasets(cfg: RunConfig) -> dict[str, TaskData]:
    """Each task's splits: validation capped by max_eval_examples, test by max_test_examples (None: whole),
    the training split cut by max_train_examples and then by the task's class_ratio."""
    return {
        t.name: load_task_data(
            t.name,
            t.dataset,
            text_column=t.text_column,
            label_column=t.label_column,
            split_seed=cfg.split_seed,
            max_train_examples=t.max_train_examples,
            max_eval_examples=cfg.max_eval_examples,
            max_test_examples=cfg.max_test_examples,
            class_ratio=t.class_ratio,
        )
        for t in cfg.tasks
    }


def train_sample(n_original: int, size: int, split_seed: int) -> list[int]:
    """The fixed training examples scored at each evaluation: seeded by split_seed (the same for every seed
    of a study), drawn from the original examples only (augmented copies come after them)."""
    rng = np.random.default_rng([split_seed, TRAIN_SAMPLE_STREAM])
    return sorted(rng.choice(n_original, size=min(size, n_original), replace=False).tolist())


def task_loss(cfg: RunConfig, trained: dict[str, TaskState]) -> TaskLoss:
    """The run's loss: class weights from each trained task's final training split (after class_ratio and
    augmentation), and the weighting between tasks."""
    class_w = {}
    for name, ts in trained.items():
        method = cfg.task(name).class_weighting
        if method != "none":
            counts = np.bincount(np.asarray(ts.train.labels, dtype=np.int64), minlength=len(ts.data.label_names))
            class_w[name] = class_weights(counts.tolist(), method)
    return TaskLoss(
        cfg.loss_weighting,
        {t: cfg.task(t).loss_weight for t in trained},
        {t: len(ts.train) for t, ts in trained.items()},
        class_w,
    )


def validation_history(records: list[dict], trained_tasks: list[str], plan: StepPlan) -> list[tuple[int, float]]:
    """(step, mean validation accuracy of the trained tasks) at each scheduled evaluation, from metrics
    records: what early stopping counts (an extra evaluation at a stop does not count)."""
    by_step: dict[int, dict[str, float]] = {}
    for r in records:
        if (
            r.get("kind") == "eval"
            and r.get("split", "validation") == "validation"
            and r["step"] % plan.eval_every == 0
        ):
            by_step.setdefault(r["step"], {}).setdefault(r["task"], r["accuracy"])
    return [
        (step, float(np.mean([acc[t] for t in trained_tasks])))
        for step, acc in sorted(by_step.items())
        if trained_tasks and all(t in acc for t in trained_tasks)
    ]


def evaluations_since_best(history: list[tuple[int, float]]) -> tuple[int, int | None, float | None]:
    """(evaluations after the best one, its step, its value); the earliest of equal bests counts."""
    best_i = max(range(len(history)), key=lambda i: (history[i][1], -i), default=None)
    if best_i is None:
        return 0, None, None
    return len(history) - 1 - best_i, history[best_i][0], history[best_i][1]


@dataclass(frozen=True)
class BuiltModel:
    model: MultiTaskModel
    tokenizer: Any
    lora: dict | None  # the adapters' settings, saved with every checkpoint (None: no adapters)
    delta: bool  # checkpoints hold only what training changes: the backbone reloads from its spec


def build_model(cfg: RunConfig, store: RunStore, label_names: dict[str, list[str]], log: logging.Logger) -> BuiltModel:
    """The model before any strategy freezes it: a fresh backbone from its spec, or another run's model."""
    if cfg.init_from:
        return _model_from_run(cfg, store, label_names, log)
    backbone = prepare_backbone(load_backbone(cfg.backbone, seed=cfg.seed), cfg)
    lora = lora_settings(cfg) if get_strategy(cfg.strategy).lora else None
    # Seeded right before the heads: every strategy with the same seed starts from the same heads
    # (LoRA's adapter init draws random numbers too).
    torch.manual_seed(cfg.seed)
    model = MultiTaskModel(backbone, label_names, cfg.pooling, cfg.head_dropout)
    # A pretrained backbone reloads from its spec; a from-scratch one exists only in the checkpoint.
    delta = not cfg.backbone.startswith("minilm-l6-scratch")
    return BuiltModel(model, load_tokenizer(cfg.backbone), lora, delta)


def _model_from_run(cfg: RunConfig, store: RunStore, label_names: dict[str, list[str]], log) -> BuiltModel:
    """``init_from``: the source run's backbone (and adapters), and its head for a task with the same labels."""
    source = store.read_config(cfg.init_from)
    if source.backbone != cfg.backbone:
        raise ConfigError(
            f"init_from run {cfg.init_from} uses backbone {source.backbone!r} but this run asks for "
            f"{cfg.backbone!r}; set backbone={source.backbone!r}."
        )
    base, tokenizer, source_meta = ckpt.load_model(store.checkpoint_dir(cfg.init_from))
    backbone = base.backbone if source_meta.get("lora") else prepare_backbone(base.backbone, cfg)
    lora = source_meta.get("lora") or (lora_settings(cfg) if get_strategy(cfg.strategy).lora else None)
    torch.manual_seed(cfg.seed)
    model = MultiTaskModel(backbone, label_names, cfg.pooling, cfg.head_dropout)
    for task, names in label_names.items():
        if base.label_names.get(task) == names:  # same task, same labels: keep its trained head
            model.heads[task].load_state_dict(base.heads[task].state_dict())
            log.info("head %s starts from run %s", task, cfg.init_from)
    # The source run changed the backbone: its weights are no longer the spec's, so save them all.
    return BuiltModel(model, tokenizer, lora, delta=False)


@dataclass
class StepPlan:
    """How many steps the run takes, which batch each one is (a ``core.batching.Schedule``: a function of
    the seed and the step, so a resumed run needs no sampler state), and how often it evaluates."""

    schedule: Schedule
    eval_every: int

    @classmethod
    def for_run(cls, cfg: RunConfig, trained: dict[str, TaskState]) -> StepPlan:
        balanced = {t: np.asarray(ts.train.labels) for t, ts in trained.items() if cfg.task(t).class_balanced_sampling}
        schedule = Schedule(
            {t: ts.train.lengths() for t, ts in trained.items()},
            cfg.batch_size,
            cfg.task_sampling,
            cfg.seed,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            temperature=cfg.sampling_temperature,
            curriculum_target=cfg.curriculum_target,
            max_task_repeats=cfg.max_task_repeats,
            balanced=balanced,
        )
        eval_every = cfg.eval_every_steps or max(1, schedule.total_steps // EVALS_PER_RUN)
        return cls(schedule, eval_every)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def epoch(self, step: int) -> float:
        return self.schedule.epoch(step)

    def batch(self, step: int) -> tuple[str, list[int]]:
        """The (task, example indices) of training step ``step`` (0-based)."""
        return self.schedule.batch(step)


def learning_rate(model: MultiTaskModel, cfg: RunConfig, name: str) -> float:
    """Heads have their own rate; with layer_lr_decay each layer gets the rate above it x decay."""
    if name.startswith("heads."):
        return cfg.head_learning_rate
    if cfg.layer_lr_decay is None:
        return cfg.backbone_learning_rate
    n = num_backbone_layers(model)
    group = group_of(name)
    depth_below_top = n - 1 - int(group.split(".")[1]) if group.startswith("layer.") else n
    return cfg.backbone_learning_rate * cfg.layer_lr_decay**depth_below_top


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: MultiTaskModel, cfg: RunConfig, trained_names: set[str], total_steps: int, extra_params: list | None = None
):
    """AdamW over every parameter that trains at any stage (a still-frozen one has no grad: untouched),
    plus ``extra_params`` (learned loss weights) at the head rate without decay, with linear warmup and
    decay; (None, None) when nothing trains."""
    from transformers import get_linear_schedule_with_warmup

    buckets: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if name in trained_names:
            decay = param.ndim >= 2  # no weight decay on biases and LayerNorm weights
            buckets.setdefault((learning_rate(model, cfg, name), decay), []).append(param)
    groups = [
        {"params": ps, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (lr, decay), ps in buckets.items()
    ]
    if not groups:
        return None, None
    if extra_params:
        groups.append({"params": extra_params, "lr": cfg.head_learning_rate, "weight_decay": 0.0})
    # Fused AdamW: one kernel over every tensor instead of a Python loop per parameter (MiniLM-L6, 22M
    # parameters on 2 CPU cores: 20 ms a step against 130 ms; BENCHMARKS.md, fourth round).
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)
    optimizer = torch.optim.AdamW(groups, fused=fused)
    warmup = int(cfg.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max(1, total_steps))
