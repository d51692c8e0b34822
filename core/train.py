"""The training engine: one run, read from and written to the run store.

``train_run(store, run_id)`` trains the run described by its config.json, appends metrics as it
goes, writes checkpoints every ``checkpoint_every_steps``, honours a STOP flag in the run folder,
and ends with test metrics in summary.json. ``resume=True`` continues from the last checkpoint:
weights, optimizer, scheduler and RNG come back, and the deterministic batch schedule
(core.batching) skips what was already done, so the curves continue without gap or repeat.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from core import checkpoint as ckpt
from core.backbones import BackboneError, load_backbone, load_tokenizer
from core.batching import Encoded, collate, encode, epoch_schedule, steps_per_epoch
from core.config import EVALS_PER_RUN, ConfigError, RunConfig
from core.data import DataError, TaskData, load_task_data
from core.evaluate import full_report, predict_logits, score
from core.features import FrozenFeatures
from core.model import MultiTaskModel, format_parameter_line, parameter_report
from core.runtime import StopRequested, create_time, pick_device, run_logger, set_frozen_eval
from core.store import InvalidRunId, RunNotFound, RunStore
from core.strategies import apply_strategy, frozen_head_tasks, get_strategy, lora_settings, prepare_backbone

STATUS_EVERY_SECONDS = 2.0
# Errors whose message is already written for the user: shown as they are, without the type name.
USER_ERRORS = (ConfigError, DataError, BackboneError, ckpt.CheckpointError, RunNotFound, InvalidRunId)


@dataclass
class TaskState:
    data: TaskData
    train: Encoded
    validation: Encoded
    test: Encoded


def train_run(store: RunStore, run_id: str, *, resume: bool = False, show_progress: bool = False) -> str:
    """Train one run to completion (or until stopped); returns the final state."""
    path = store.existing_path(run_id)
    logger = run_logger(path / "train.log")
    previous = store.read_status(run_id)
    store.update_status(
        run_id, state="running", pid=os.getpid(), pid_create_time=create_time(), host=socket.gethostname(), error=None,
        started_at=previous.get("started_at") if resume and previous.get("started_at") else time.time(),
        finished_at=None,
    )
    try:
        return Trainer(store, run_id, logger, resume, show_progress).run()
    except StopRequested as exc:  # SIGTERM: the last periodic checkpoint is what is kept
        logger.info("stopped: %s", exc)
        store.update_status(run_id, state="stopped", finished_at=time.time(), note=str(exc))
        store.clear_stop(run_id)
        return "stopped"
    except Exception as exc:
        logger.exception("run failed")
        message = str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"
        store.update_status(run_id, state="failed", error=message + " (details in train.log)", finished_at=time.time())
        raise
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)


class Trainer:
    def __init__(self, store: RunStore, run_id: str, logger: logging.Logger, resume: bool, show_progress: bool):
        self.store, self.run_id, self.log, self.resume, self.show_progress = store, run_id, logger, resume, show_progress
        self.cfg: RunConfig = store.read_config(run_id).validate()
        self.ckpt_dir = store.checkpoint_dir(run_id)
        self.t0 = time.time()
        self.train_seconds = 0.0
        self.examples_seen = 0
        self.tokens_seen = 0
        self.ready = False

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load data, model and optimizer (run() calls it when a caller has not)."""
        cfg = self.cfg
        self.ready = True
        self.device = pick_device(cfg.device)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.log.info("run %s: strategy=%s backbone=%s device=%s", self.run_id, cfg.strategy, cfg.backbone, self.device)
        self.tasks: dict[str, TaskState] = {}
        datas = {
            t.name: load_task_data(
                t.name, t.dataset, text_column=t.text_column, label_column=t.label_column, split_seed=cfg.split_seed,
                max_train_examples=t.max_train_examples, max_eval_examples=cfg.max_eval_examples,
            )
            for t in cfg.tasks
        }
        self.model, self.tokenizer = self._build_model({k: d.label_names for k, d in datas.items()})
        for name, data in datas.items():
            enc = [encode(self.tokenizer, s.texts, s.labels, cfg.max_length) for s in (data.train, data.validation, data.test)]
            self.tasks[name] = TaskState(data, *enc)
            self.log.info("task %s: %s", name, data.summary())
        apply_strategy(self.model, cfg)  # the final stage: everything that will ever train
        self.report = parameter_report(self.model)
        self.log.info(format_parameter_line(self.report))
        self.trained_names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        self.staged = get_strategy(cfg.strategy).staged
        self.stage: int | None = None
        frozen_heads = set(frozen_head_tasks(cfg)) if not cfg.train_frozen_head_tasks else set()
        self.trained_tasks = [t for t in self.tasks if t not in frozen_heads] if self.trained_names else []
        lengths = {t: self.tasks[t].train.lengths() for t in self.trained_tasks}
        self.lengths = lengths
        self.steps_per_epoch = steps_per_epoch({t: len(v) for t, v in lengths.items()}, cfg.batch_size, cfg.task_sampling)
        if self.steps_per_epoch == 0:
            self.total_steps = 0
        else:
            self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.eval_every = cfg.eval_every_steps or max(1, self.total_steps // EVALS_PER_RUN)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.model.to(self.device)
        encoded = {t: {"train": ts.train, "validation": ts.validation, "test": ts.test} for t, ts in self.tasks.items()}
        reusable = not cfg.init_from and not self.staged and not self.lora
        self.features = FrozenFeatures(self.model, encoded, cfg, self.trained_names, reusable,
                                       self.store.root / ".cache", self.device, self.pad_id, self.log)
        self.optimizer, self.scheduler = self._optimizer()
        self.step = 0
        if self.resume:
            self._restore()
        self._update_stage()
        self.store.update_status(
            self.run_id, progress=self._progress(), trainable_params=self.report["trainable_params"],
            total_params=self.report["total_params"],
        )

    def _build_model(self, label_names: dict[str, list[str]]) -> tuple[MultiTaskModel, object]:
        cfg = self.cfg
        if cfg.init_from:
            source = self.store.read_config(cfg.init_from)
            if source.backbone != cfg.backbone:
                raise ConfigError(
                    f"init_from run {cfg.init_from} uses backbone {source.backbone!r} but this run asks for "
                    f"{cfg.backbone!r}; set backbone={source.backbone!r}."
                )
            base, tokenizer, source_meta = ckpt.load_model(self.store.checkpoint_dir(cfg.init_from))
            backbone = base.backbone if source_meta.get("lora") else prepare_backbone(base.backbone, cfg)
            self.lora = source_meta.get("lora") or (lora_settings(cfg) if get_strategy(cfg.strategy).lora else None)
            torch.manual_seed(cfg.seed)
            model = MultiTaskModel(backbone, label_names, cfg.pooling, cfg.head_dropout)
            for task, names in label_names.items():
                if base.label_names.get(task) == names:  # same task, same labels: keep its trained head
                    model.heads[task].load_state_dict(base.heads[task].state_dict())
                    self.log.info("head %s starts from run %s", task, cfg.init_from)
            self.delta = False
            return model, tokenizer
        backbone = prepare_backbone(load_backbone(cfg.backbone, seed=cfg.seed), cfg)
        self.lora = lora_settings(cfg) if get_strategy(cfg.strategy).lora else None
        # Seeded right before the heads: every strategy with the same seed starts from the same heads
        # (LoRA's adapter init draws random numbers too).
        torch.manual_seed(cfg.seed)
        model = MultiTaskModel(backbone, label_names, cfg.pooling, cfg.head_dropout)
        # A pretrained backbone reloads from its spec, so only what training touches needs saving.
        self.delta = not cfg.backbone.startswith("minilm-l6-scratch")
        return model, load_tokenizer(cfg.backbone)

    def _logits(self, task: str, split: str) -> np.ndarray:
        if self.features.active:
            return self.features.logits(task, split)
        enc = getattr(self.tasks[task], split)
        return predict_logits(self.model, enc, task, self.cfg.eval_batch_size, self.pad_id, self.device)

    def _learning_rate(self, name: str) -> float:
        """Heads have their own rate; with layer_lr_decay each layer gets the rate above it x decay."""
        from core.model import group_of, num_backbone_layers

        cfg = self.cfg
        if name.startswith("heads."):
            return cfg.head_learning_rate
        if cfg.layer_lr_decay is None:
            return cfg.backbone_learning_rate
        n = num_backbone_layers(self.model)
        group = group_of(name)
        depth_below_top = n - 1 - int(group.split(".")[1]) if group.startswith("layer.") else n
        return cfg.backbone_learning_rate * cfg.layer_lr_decay ** depth_below_top

    def _optimizer(self):
        """AdamW over every parameter that trains at any stage (a still-frozen one has no grad: untouched)."""
        from transformers import get_linear_schedule_with_warmup

        buckets: dict[tuple[float, bool], list] = {}
        for name, param in self.model.named_parameters():
            if name in self.trained_names:
                decay = param.ndim >= 2  # no weight decay on biases and LayerNorm weights
                buckets.setdefault((self._learning_rate(name), decay), []).append(param)
        groups = [{"params": ps, "lr": lr, "weight_decay": self.cfg.weight_decay if decay else 0.0}
                  for (lr, decay), ps in buckets.items()]
        if not groups:
            return None, None
        optimizer = torch.optim.AdamW(groups)
        warmup = int(self.cfg.warmup_ratio * self.total_steps)
        return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max(1, self.total_steps))

    def _restore(self) -> None:
        meta = ckpt.read_checkpoint_meta(self.ckpt_dir)
        state = load_file(str(self.ckpt_dir / "model.safetensors"))
        self.model.load_state_dict(state, strict=meta["weights"] == "full")
        info = ckpt.load_train_state(self.ckpt_dir, self.optimizer, self.scheduler) if self.optimizer else {}
        self.step = int(info.get("step", meta.get("step", 0)))
        self.train_seconds = float(info.get("train_seconds", 0.0))
        self.examples_seen = int(info.get("examples_seen", 0))
        self.tokens_seen = int(info.get("tokens_seen", 0))
        self.t0 = time.time() - float(info.get("wall_seconds", 0.0))
        self._truncate_metrics_after(self.step)
        self.log.info("resumed at step %d of %d", self.step, self.total_steps)

    def _truncate_metrics_after(self, step: int) -> None:
        """Drop records logged after the checkpoint we resume from: the curves must not repeat a step."""
        kept = [r for r in self.store.read_metrics(self.run_id) if r.get("step", 0) <= step]
        path = self.store.path(self.run_id) / "metrics.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(path)

    def _update_stage(self) -> None:
        """gradual_unfreeze: unfreeze one more layer from the top every ``unfreeze_every_steps``."""
        if not self.staged:
            return
        every = self.cfg.unfreeze_every_steps or max(1, self.steps_per_epoch)
        stage = self.step // every
        if stage != self.stage:
            apply_strategy(self.model, self.cfg, unfrozen_layers=stage)
            if self.stage is not None or self.step == 0:
                trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
                self.store.append_metrics(self.run_id, {"kind": "unfreeze", **self._position(),
                                                        "unfrozen_layers": stage, "trainable_params": trainable})
            self.stage = stage

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> str:
        if self.resume:
            self.store.clear_stop(self.run_id)
        if not self.ready:
            self.setup()
        if self.step == 0:
            self._evaluate()
        progress = None
        if self.show_progress:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc=self.run_id, unit="step", leave=False)
        window = {t: [] for t in self.trained_tasks}
        window_ex = window_tok = 0
        window_time = 0.0
        last_status = time.time()
        schedule, schedule_epoch = [], -1
        while self.step < self.total_steps:
            if self.store.stop_requested(self.run_id):
                return self._finish_stopped(progress)
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            if epoch != schedule_epoch:
                schedule = epoch_schedule(
                    self.lengths, self.cfg.batch_size, self.cfg.task_sampling, self.cfg.sampling_temperature,
                    self.cfg.seed, epoch,
                )
                schedule_epoch = epoch
            task, idx = schedule[offset]
            self._update_stage()
            tick = time.perf_counter()
            loss, n_tokens = self._train_step(task, idx)
            elapsed = time.perf_counter() - tick
            self.step += 1
            self.train_seconds += elapsed
            window_time += elapsed
            window[task].append(loss)
            window_ex += len(idx)
            window_tok += n_tokens
            self.examples_seen += len(idx)
            self.tokens_seen += n_tokens
            if progress:
                progress.update(1)
            if self.step % self.cfg.log_every_steps == 0 or self.step == self.total_steps:
                self._log_train(window, window_ex, window_tok, window_time)
                window = {t: [] for t in self.trained_tasks}
                window_ex = window_tok = 0
                window_time = 0.0
            if self.step % self.eval_every == 0 and self.step < self.total_steps:
                self._evaluate()
            if self.step % self.cfg.checkpoint_every_steps == 0 and self.step < self.total_steps:
                self._save(with_train_state=True)
            if time.time() - last_status > STATUS_EVERY_SECONDS:
                self.store.update_status(self.run_id, progress=self._progress())
                last_status = time.time()
        if progress:
            progress.close()
        return self._finish_completed()

    def _train_step(self, task: str, idx: list[int]) -> tuple[float, int]:
        self.model.train()
        set_frozen_eval(self.model)
        if self.features.active:
            logits, n_tokens = self.features.train_logits(task, idx)
            labels = torch.tensor([self.tasks[task].train.labels[i] for i in idx], dtype=torch.long, device=self.device)
        else:
            ids, mask, labels, n_tokens = collate(self.tasks[task].train, idx, self.pad_id)
            ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self.model(ids, mask, task)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        (loss * self.cfg.task(task).loss_weight).backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), n_tokens

    # -- logging ----------------------------------------------------------------------------------
    def _position(self) -> dict:
        epoch = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return {"step": self.step, "epoch": round(epoch, 4), "wall_seconds": round(time.time() - self.t0, 3)}

    def _log_train(self, window: dict, n_ex: int, n_tok: int, seconds: float) -> None:
        pos = self._position()
        lrs = self.scheduler.get_last_lr()
        records = [
            {"kind": "train", **pos, "task": t, "loss": float(np.mean(v)), "lr": lrs[0]} for t, v in window.items() if v
        ]
        records.append({
            "kind": "throughput", **pos, "examples_per_second": n_ex / seconds if seconds else None,
            "tokens_per_second": n_tok / seconds if seconds else None,
        })
        self.store.append_metrics(self.run_id, *records)

    def _evaluate(self) -> dict[str, dict]:
        pos = self._position()
        results = {}
        for name, ts in self.tasks.items():
            results[name] = score(self._logits(name, "validation"), ts.validation.labels, len(ts.data.label_names))
        self.store.append_metrics(
            self.run_id, *({"kind": "eval", "split": "validation", **pos, "task": t, **m} for t, m in results.items())
        )
        return results

    def _progress(self) -> dict:
        rate = self.step / self.train_seconds if self.train_seconds else None
        remaining = (self.total_steps - self.step) / rate if rate else None
        return {
            "step": self.step, "total_steps": self.total_steps, "epoch": self._position()["epoch"],
            "eta_seconds": round(remaining, 1) if remaining is not None else None,
            "examples_per_second": self.examples_seen / self.train_seconds if self.train_seconds else None,
            "tokens_per_second": self.tokens_seen / self.train_seconds if self.train_seconds else None,
        }

    # -- endings ----------------------------------------------------------------------------------
    def _save(self, with_train_state: bool) -> None:
        ckpt.save_checkpoint(
            self.ckpt_dir, self.model, self.tokenizer, backbone=self.cfg.backbone,
            delta_names=self.trained_names if self.delta else None, step=self.step,
            extra={"max_length": self.cfg.max_length, "lora": self.lora},
        )
        if with_train_state and self.optimizer is not None:
            ckpt.save_train_state(self.ckpt_dir, self.optimizer, self.scheduler, self.step, {
                "train_seconds": self.train_seconds, "wall_seconds": time.time() - self.t0,
                "examples_seen": self.examples_seen, "tokens_seen": self.tokens_seen,
            })

    def _finish_stopped(self, progress) -> str:
        if progress:
            progress.close()
        self._save(with_train_state=True)
        self._evaluate()
        self.store.write_summary(self.run_id, self._summary(test=None, state="stopped"))
        self.store.update_status(self.run_id, state="stopped", finished_at=time.time(), progress=self._progress())
        self.store.clear_stop(self.run_id)
        self.log.info("stopped at step %d; checkpoint kept", self.step)
        return "stopped"

    def _finish_completed(self) -> str:
        if self.total_steps > 0:
            self._evaluate()
        test = {}
        for name, ts in self.tasks.items():
            logits = self._logits(name, "test")
            test[name] = {**score(logits, ts.test.labels, len(ts.data.label_names)),
                          **full_report(logits, ts.test.labels, ts.data.label_names)}
        self._save(with_train_state=False)
        ckpt.drop_train_state(self.ckpt_dir)
        self.store.write_summary(self.run_id, self._summary(test=test, state="completed"))
        self.store.update_status(self.run_id, state="completed", finished_at=time.time(), progress=self._progress())
        self.log.info("completed: %s", {t: round(m["accuracy"], 4) for t, m in test.items()})
        return "completed"

    def _summary(self, test: dict | None, state: str) -> dict:
        evals = [r for r in self.store.read_metrics(self.run_id) if r.get("kind") == "eval"]
        frozen = set(frozen_head_tasks(self.cfg))
        tasks = {}
        for name, ts in self.tasks.items():
            curve = [r for r in evals if r["task"] == name]
            best = max(curve, key=lambda r: r["accuracy"]) if curve else None
            entry = {
                "label_names": ts.data.label_names,
                "n_train": len(ts.train), "n_validation": len(ts.validation), "n_test": len(ts.test),
                "trained": name in self.trained_tasks, "head_frozen": name in frozen,
                "val_accuracy": curve[-1]["accuracy"] if curve else None,
                "val_macro_f1": curve[-1]["macro_f1"] if curve else None,
                "best_val_accuracy": best["accuracy"] if best else None,
                "best_val_step": best["step"] if best else None,
                "initial_val_accuracy": curve[0]["accuracy"] if curve else None,
                # How far the task moved from where it started: for a frozen head, the backbone's drift.
                "val_accuracy_change": curve[-1]["accuracy"] - curve[0]["accuracy"] if curve else None,
            }
            if test:
                t = test[name]
                entry.update({"test_accuracy": t["accuracy"], "test_macro_f1": t["macro_f1"], "test_loss": t["loss"],
                              "per_class": t["per_class"], "confusion_matrix": t["confusion_matrix"]})
            tasks[name] = entry
        return {
            "run_id": self.run_id, "state": state, "strategy": self.cfg.strategy, "backbone": self.cfg.backbone,
            "device": str(self.device), "steps": self.step, "embedding_cache": self.features.heads_only, "cached_bottom_layers": self.features.lower_k, "total_steps": self.total_steps,
            "epochs": self._position()["epoch"],
            "train_seconds": round(self.train_seconds, 3), "wall_seconds": round(time.time() - self.t0, 3),
            "examples_seen": self.examples_seen, "tokens_seen": self.tokens_seen,
            "examples_per_second": self.examples_seen / self.train_seconds if self.train_seconds else None,
            "tokens_per_second": self.tokens_seen / self.train_seconds if self.train_seconds else None,
            **self.report, "tasks": tasks,
        }
