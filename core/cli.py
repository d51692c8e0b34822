"""Command line: ``python -m core <command>``. Run ``python -m core --help`` for the list."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

from core.backbones import BUILTIN_BACKBONES
from core.config import (
    Augment,
    ClassWeighting,
    CurriculumTarget,
    Device,
    LossWeighting,
    RunConfig,
    TaskConfig,
    TaskSampling,
    choices,
    parse_class_ratio,
)
from core.errors import ConfigError, ExportError, FreezeLabError, user_message
from core.records import RunState, RunSummary
from core.store import RunRecord, RunStore, default_runs_dir
from core.strategies import STRATEGIES

# Torch and pandas are imported inside the commands that need them: `submit`, `runs` and `queue` start in
# a fraction of a second.

BACKENDS = ("local", "ray")  # core.jobs.BACKENDS, spelled here so that building the parser imports no job code
CONFIG_OPTIONS = (  # options that set the config key of the same name
    "strategy",
    "freeze_layers",
    "backbone",
    "epochs",
    "max_steps",
    "batch_size",
    "head_learning_rate",
    "backbone_learning_rate",
    "max_length",
    "task_sampling",
    "curriculum_target",
    "max_task_repeats",
    "loss_weighting",
    "eval_every_steps",
    "max_eval_examples",
    "seed",
    "device",
    "name",
    "init_from",
)
TASK_OPTIONS = (
    "dataset",
    "name",
    "text_column",
    "label_column",
    "max_train_examples",
    "loss_weight",
    "class_weighting",
    "class_balanced_sampling",
    "class_ratio",
    "augment",
    "augment_copies",
)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train, submit and sweep; each one left out keeps the config file's or default value."""
    p.add_argument("--config", help="JSON file with config keys (see a run's config.json)")
    p.add_argument("--strategy", choices=list(STRATEGIES))
    p.add_argument("--freeze-layers", type=int, help="k for freeze_lower: embeddings + bottom k layers frozen")
    p.add_argument("--backbone", help="minilm-l6 (default), minilm-l6:K, minilm-l6-scratch, a model folder or hub id")
    for t in ("a", "b"):
        p.add_argument(
            f"--task-{t}", dest=f"task_{t}", help=f"dataset for task {t.upper()}: built-in name, file, or hf:NAME"
        )
        p.add_argument(f"--task-{t}-name", dest=f"task_{t}_name")
        p.add_argument(f"--task-{t}-text-column", dest=f"task_{t}_text_column")
        p.add_argument(f"--task-{t}-label-column", dest=f"task_{t}_label_column")
        p.add_argument(f"--task-{t}-max-train-examples", dest=f"task_{t}_max_train_examples", type=int)
        p.add_argument(f"--task-{t}-loss-weight", dest=f"task_{t}_loss_weight", type=float)
        p.add_argument(
            f"--task-{t}-class-weighting", dest=f"task_{t}_class_weighting", choices=choices(ClassWeighting),
            help="class weights in the cross-entropy: inverse frequency or effective number (Cui et al. 2019)",
        )  # fmt: skip
        p.add_argument(
            f"--task-{t}-class-balanced", dest=f"task_{t}_class_balanced_sampling", action="store_true", default=None,
            help="draw every class equally often in this task's batches",
        )  # fmt: skip
        p.add_argument(
            f"--task-{t}-class-ratio", dest=f"task_{t}_class_ratio", metavar="CLASS=FRACTION,...",
            help="keep this fraction of a class in the TRAINING split only, e.g. negative=0.1",
        )  # fmt: skip
        p.add_argument(
            f"--task-{t}-augment", dest=f"task_{t}_augment", choices=choices(Augment),
            help="augmented copies of the training split: eda (word edits), embedding (neighbour words), both",
        )  # fmt: skip
        p.add_argument(f"--task-{t}-augment-copies", dest=f"task_{t}_augment_copies", type=int)
    p.add_argument("--tasks", choices=["both", "a", "b"], help="train both tasks (default), or task A or B alone")
    p.add_argument("--max-train-examples", type=int, help="cap the training examples of every task")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--head-lr", dest="head_learning_rate", type=float)
    p.add_argument("--backbone-lr", dest="backbone_learning_rate", type=float)
    p.add_argument("--max-length", type=int)
    p.add_argument("--task-sampling", choices=choices(TaskSampling))
    p.add_argument(
        "--curriculum-target", choices=choices(CurriculumTarget), help="where --task-sampling curriculum ends"
    )
    p.add_argument("--max-task-repeats", type=float, help="at most this many passes over a task's data (UniMax)")
    p.add_argument("--loss-weighting", choices=choices(LossWeighting))
    p.add_argument("--eval-every-steps", type=int)
    p.add_argument("--max-eval-examples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=choices(Device))
    p.add_argument("--name")
    p.add_argument("--init-from", help="start from another run's weights (its id)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other config key, e.g. --set warmup_ratio=0.2",
    )


def config_from_args(args: argparse.Namespace, store: RunStore) -> RunConfig:
    """The config file (or the defaults), then each option given, then each ``--set``; validated."""
    cfg = RunConfig.from_file(args.config) if args.config else RunConfig()
    changes = {key: value for key in CONFIG_OPTIONS if (value := getattr(args, key, None)) is not None}
    if args.init_from and args.backbone is None:
        changes["backbone"] = store.read_config(args.init_from).backbone  # follow the run we start from
    cfg = dataclasses.replace(cfg, **changes, tasks=_tasks_from_args(args, cfg.tasks))
    overrides = _set_options(args.set)
    if overrides:  # free-form JSON values: from_dict checks the keys and the shape of each
        cfg = RunConfig.from_dict({**cfg.to_dict(), **overrides})
    return cfg.validate()


def given_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the user set on purpose: options given, ``--set`` keys and the config file's keys."""
    keys = {key for key in CONFIG_OPTIONS if getattr(args, key, None) is not None}
    keys |= set(_set_options(args.set))
    if args.config:
        in_file = set(json.loads(Path(args.config).read_text(encoding="utf-8")))  # checked by config_from_args
        if "max_eval_examples" in in_file:  # an older file's test cap comes from it (RunConfig.from_dict)
            in_file.add("max_test_examples")
        keys |= in_file
    return keys


def _tasks_from_args(args: argparse.Namespace, tasks: list[TaskConfig]) -> list[TaskConfig]:
    """Task A and B from their options: ``--task-a*`` changes the first task, ``--task-b*`` the second."""
    tasks = [dataclasses.replace(t) for t in tasks]
    for i, t in enumerate(("a", "b")):
        if getattr(args, f"task_{t}") is None and i >= len(tasks):
            continue
        if i >= len(tasks):
            tasks.append(TaskConfig(name=f"task_{t}", dataset=""))
        task = tasks[i]
        for field in TASK_OPTIONS:
            value = getattr(args, f"task_{t}" if field == "dataset" else f"task_{t}_{field}")
            if value is not None and field == "class_ratio":
                value = _class_ratio(value, f"--task-{t}-class-ratio")
            if value is not None:
                setattr(task, field, value)
        if args.max_train_examples is not None and getattr(args, f"task_{t}_max_train_examples") is None:
            task.max_train_examples = args.max_train_examples
    if args.tasks in ("a", "b"):
        tasks = tasks[:1] if args.tasks == "a" else tasks[1:2]
    return tasks


def _class_ratio(text: str, option: str) -> dict[str, float] | None:
    """``negative=0.1``; the class names are checked against the dataset's labels when the data loads."""
    try:
        return parse_class_ratio(text) or None
    except ConfigError as exc:
        raise ConfigError(f"{option} {text!r}: {exc}") from None


def _set_options(items: list[str]) -> dict:
    """``--set KEY=VALUE`` options: VALUE as JSON, else as a string."""
    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set warmup_ratio=0.2")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _store(args) -> RunStore:
    return RunStore(args.runs_dir or default_runs_dir())


def cmd_strategies(args) -> None:
    from core.backbones import load_backbone_config
    from core.strategies import plan

    items = [s.as_dict() for s in STRATEGIES.values()]
    half = load_backbone_config(args.backbone).num_hidden_layers // 2
    for s in items:
        cfg = RunConfig(
            strategy=s["id"], backbone=args.backbone, freeze_layers=half if s["uses_freeze_layers"] else None
        )
        report = plan(cfg, {"topic": 5, "sentiment": 2})
        s.update(
            trainable_params=report["trainable_params"],
            total_params=report["total_params"],
            trainable_percent=report["trainable_percent"],
            layers=report["layers"],
        )
        if "initial_trainable_params" in report:
            s["initial_trainable_params"] = report["initial_trainable_params"]
    if args.json:
        print(json.dumps(items, indent=2))
        return
    print(
        f"trainable parameters on {args.backbone} with heads for 5 topics and 2 sentiments "
        f"(freeze_lower at k={half}; gradual_unfreeze when fully unfrozen):"
    )
    for s in items:
        extra = " (needs --freeze-layers K)" if s["uses_freeze_layers"] else ""
        trains = [g["group"] for g in s["layers"] if g["trainable"]]
        print(
            f"{s['id']:<18} {s['trainable_params']:>11,} ({s['trainable_percent']:7.3f}%)  {s['title']}{extra}\n"
            f"{'':<18} {s['when_to_use']}\n{'':<18} trains: {', '.join(trains) or 'nothing'}"
        )


def cmd_datasets(args) -> None:
    from core.data import BUILTIN_DATASETS

    for name, desc in BUILTIN_DATASETS.items():
        print(f"{name:<16} {desc}")
    print("files: .csv .jsonl .json .parquet with a text and a label column; hub datasets: hf:NAME")


def cmd_backbones(args) -> None:
    for b in BUILTIN_BACKBONES.values():
        print(f"{b.name:<18} {b.size_class:<14} {b.speed_class:<14} {b.description}")
    print("any local Hugging Face model folder or hub id also works (hub needs network)")


def cmd_train(args) -> int:
    from core.jobs import check_runnable, runnable_warnings
    from core.train import train_run

    store = _store(args)
    cfg = check_runnable(store, config_from_args(args, store))
    _warn(runnable_warnings(cfg))
    run_id = store.create_run(cfg)
    print(f"training {run_id} ({cfg.strategy}, {cfg.backbone}); log: {store.log_path(run_id)}", file=sys.stderr)
    state = train_run(store, run_id, show_progress=True)
    summary = store.read_summary(run_id) or RunSummary()
    for task, t in summary.tasks.items():
        if t.test_accuracy is not None:
            print(f"{task}: test accuracy {t.test_accuracy:.4f}, macro-F1 {t.test_macro_f1:.4f}")
    print(
        f"trainable params {summary.trainable_params or 0:,} of {summary.total_params or 0:,}; "
        f"train {summary.train_seconds or 0:.1f} s; state {state}"
    )
    print(run_id)
    return 0


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


def cmd_submit(args) -> None:
    from core import jobs

    store = _store(args)
    cfg = config_from_args(args, store)
    if args.concurrency is not None:
        jobs.set_concurrency(store, args.concurrency)
    run_id = jobs.submit(store, cfg, backend=args.backend, address=args.address)
    _warn(jobs.runnable_warnings(cfg))
    print(run_id)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_sweep(args) -> None:
    from core import jobs
    from core.sweeps import parse_vary

    store = _store(args)
    base = config_from_args(args, store)
    strategies = list(STRATEGIES) if args.strategies == "all" else _csv(args.strategies)
    for s in strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"--strategies: {s!r} is unknown; choose from {', '.join(STRATEGIES)} or all.")
    if args.concurrency is not None:
        jobs.set_concurrency(store, args.concurrency)
    sweep_id, run_ids = jobs.sweep(
        store,
        base,
        strategies=strategies,
        seeds=_ints(args.seeds, "--seeds"),
        backbones=_csv(args.backbones) if args.backbones else None,
        freeze_layers=_ints(args.freeze_layers_list, "--freeze-layers-list") if args.freeze_layers_list else None,
        backend=args.backend,
        address=args.address,
        separate_models=args.separate_models,
        vary=parse_vary(args.vary),
    )
    print(f"sweep {sweep_id}: {len(run_ids)} runs queued", file=sys.stderr)
    print("\n".join(run_ids))


def cmd_queue(args) -> None:
    from core import jobs

    store = _store(args)
    jobs.reconcile(store)
    info = jobs.runner_info(store)
    all_records = store.list_runs()
    records = [r for r in all_records if r.damaged is None and r.state.live]
    damaged = [r for r in all_records if r.damaged is not None]  # their state may be unknown: show them
    if args.json:
        runs = [
            {"id": r.id, "state": r.state, "progress": r.status.progress and r.status.progress.to_dict()}
            for r in records
        ]
        print(
            json.dumps(
                {
                    "runner": info,
                    "concurrency": jobs.get_concurrency(store),
                    "runs": runs,
                    "damaged": [{"id": r.id, "damaged": r.damaged} for r in damaged],
                },
                indent=2,
            )
        )
        return
    print(
        f"runner: {'pid ' + str(info['pid']) if info else 'not running (the next submit starts one)'}; "
        f"concurrency {jobs.get_concurrency(store)}"
    )
    for r in sorted(records, key=lambda r: (r.state != RunState.RUNNING, r.status.queued_at or 0)):
        p = r.progress
        eta = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
        total = p.total_steps if p.total_steps is not None else "?"
        where = f" step {p.step}/{total}{eta}" if r.state == RunState.RUNNING else ""
        print(f"{r.id:<60} {r.state}{where}")
    for r in damaged:
        print(f"{r.id:<60} damaged: {r.damaged}")
    if not records:
        print("the queue is empty")


def cmd_cancel(args) -> None:
    from core import jobs

    state = jobs.cancel(_store(args), args.run, wait_seconds=args.wait)
    note = " (stop requested; it ends at its next step)" if state == RunState.RUNNING else ""
    print(f"{args.run}: {state or 'unknown'}{note}")


def cmd_resume(args) -> None:
    from core import jobs

    how = jobs.resume(_store(args), args.run)
    print(
        f"{args.run}: queued to {'continue from its last checkpoint' if how == 'resume' else 'start again (no checkpoint)'}"
    )


def cmd_runner(args) -> int:
    from core import jobs

    store = _store(args)
    if args.concurrency is not None:
        jobs.set_concurrency(store, args.concurrency)
    return jobs.Runner(store, idle_exit_seconds=args.idle_exit, grace_seconds=args.grace).serve(args.lock_fd)


def cmd_work(args) -> int:
    from core.runner import THREADS_ENV
    from core.runtime import raise_stop_on_sigterm
    from core.train import train_run

    raise_stop_on_sigterm()
    if threads := os.environ.get(THREADS_ENV):  # set by the runner: its share of the cores
        import torch

        torch.set_num_threads(max(1, int(threads)))
    store = _store(args)
    state = train_run(store, args.run, resume=args.resume)
    if state == RunState.COMPLETED:
        _measure_int8_quietly(store, args.run)
    return 0 if state in (RunState.COMPLETED, RunState.STOPPED) else 1


def _measure_int8_quietly(store: RunStore, run_id: str) -> None:
    """After a run completes: how often int8 agrees with full precision, for the Playground's int8 switch.
    Study runs skip it (many runs, none served); ``python -m core int8 RUN`` measures any run on demand. A
    failure here never fails the run, which is already complete: the Playground then stays in full precision."""
    from core.predict import measure_int8

    try:
        if store.stop_requested(run_id) or any(t.startswith("study:") for t in store.read_config(run_id).tags):
            return  # asked to stop as it completed, or a study run: `python -m core int8 RUN` measures it later
        measure_int8(store, run_id)
    except Exception as exc:  # noqa: BLE001 - the run is complete; int8 is an optional speed-up
        print(f"int8 agreement not measured: {exc!r}", file=sys.stderr)


def cmd_int8(args) -> None:
    from core.predict import measure_int8

    store = _store(args)
    store.existing_path(args.run)
    report = measure_int8(store, args.run)
    verdict = "int8 allowed" if report["allowed"] else "int8 not allowed (the Playground stays in full precision)"
    print(
        f"{args.run}: int8 agrees with full precision on {report['agreement']:.1%} of {report['n']:,} test sentences: {verdict}"
    )


Z95 = 1.96
SMALL_TEST_SET = 100  # core.stats.SMALL_TEST_SET: fewer test sentences pin an accuracy to about +-10 points or worse


def _acc_with_noise(accuracy: float, n: int | None, digits: int = 3) -> str:
    """An accuracy with the 95% half-width its test set allows (binomial), and the set's size."""
    if not n:
        return f"{accuracy:.{digits}f}"
    q = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)  # core.stats.test_set_half_width, without importing scipy
    half = Z95 * math.sqrt(q * (1 - q) / n)
    return f"{accuracy:.{digits}f} +-{half:.{digits}f} (n={n})"


def _fmt_acc(summary: RunSummary | None) -> str:
    if not summary:
        return "-"
    accs = [
        f"{task}={_acc_with_noise(t.test_accuracy, t.n_test, 2)}"
        for task, t in summary.tasks.items()
        if t.test_accuracy is not None
    ]
    return " ".join(accs) or "-"


def cmd_runs(args) -> None:
    records = _store(args).list_runs()
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2, default=str))
        return
    if not records:
        print("no runs yet: start one with `python -m core train --strategy frozen_backbone --max-train-examples 500`")
        return
    for r in records:
        secs = r.summary.train_seconds if r.summary else None
        state = "damaged" if r.damaged else r.state
        print(
            f"{r.id:<48} {state:<10} {r.config.get('strategy', '?'):<16} {r.config.get('backbone', '?'):<18} "
            f"{_fmt_acc(r.summary):<56} {'' if secs is None else f'{secs:.1f}s'}"
            + (f"  ({r.damaged})" if r.damaged else "")
        )


def cmd_show(args) -> None:
    record = _store(args).record(args.run)
    if args.json:
        print(json.dumps(record.as_dict(), indent=2, default=str))
        return
    _print_record(record)


def _print_record(record: RunRecord) -> None:
    print(
        f"run      {record.id}\nstate    {record.state}\nstrategy {record.config.get('strategy')}\n"
        f"backbone {record.config.get('backbone')}"
    )
    if record.damaged:
        print(f"damaged  {record.damaged}")
    if record.status.error:
        print(f"error    {record.status.error}")
    s = record.summary
    if s:
        print(
            f"params   {s.trainable_params or 0:,} trainable of {s.total_params or 0:,} "
            f"({s.trainable_percent or 0:.2f}%)\ntime     {s.train_seconds or 0:.1f} s training, "
            f"{s.wall_seconds or 0:.1f} s in all"
        )
        for task, t in s.tasks.items():
            acc = (
                f"test acc {_acc_with_noise(t.test_accuracy, t.n_test)} macro-F1 {t.test_macro_f1:.3f}"
                + (" (a small test set: wide interval)" if t.n_test and t.n_test < SMALL_TEST_SET else "")
                if t.test_accuracy is not None
                else ""
            )
            change = t.val_accuracy_change
            print(
                f"task     {task}: {acc} (val accuracy change {change:+.4f})"
                if change is not None
                else f"task     {task}: {acc}"
            )


def cmd_predict(args) -> None:
    from core.predict import Predictor

    predictor = Predictor.from_run(_store(args), args.run)
    results = predictor.predict(args.texts)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        parts = [f"{task}={v['label']} ({v['probabilities'][v['label']]:.2f})" for task, v in r["tasks"].items()]
        print(f"{r['text'][:60]!r}: " + ", ".join(parts))


def cmd_export(args) -> None:
    """A run as a folder sentence-transformers loads: the encoder (LoRA merged), the heads, a README."""
    from pathlib import Path

    from core.export import export_run

    store = _store(args)
    store.existing_path(args.run)
    try:
        out = export_run(
            store.checkpoint_dir(args.run),
            Path(args.dir),
            config=store.read_config(args.run),
            summary=store.read_summary(args.run),
            overwrite=args.overwrite,
        )
    except ExportError as exc:
        raise ExportError(str(exc).replace("pass overwrite", "pass --overwrite")) from None
    print(f"exported {args.run} to {out}: SentenceTransformer({str(out)!r}) loads it; heads in heads.safetensors")


def cmd_separate(args) -> None:
    """Multi-task against separate models: accuracy, parameters to serve, train time, prediction latency."""
    from core.analysis import separate_models_table
    from core.predict import Predictor, median_latency

    store = _store(args)
    records = store.list_runs()
    if args.sweep and not any(r.config.get("sweep_id") == args.sweep for r in records):
        known = sorted({r.config.get("sweep_id") for r in records if r.config.get("sweep_id")})
        raise ConfigError(
            f"no sweep {args.sweep!r} in {store.root}; "
            + (f"sweeps there: {', '.join(known[:10])}" if known else "it has no sweep yet")
            + " (`python -m core runs --json` shows each run's sweep_id)."
        )
    records = [r for r in records if r.config.get("sweep_id") == args.sweep or not args.sweep]
    table = separate_models_table(records)
    if table.empty:
        print("no completed multi-task run with single-task partners; run `python -m core sweep --separate-models`")
        return
    texts = ["the central bank raised interest rates again", "a warm , funny and beautifully acted film"] * 16
    for i, row in table.iterrows():
        multi = Predictor.from_run(store, row["multi_task_run"])
        singles = [Predictor.from_run(store, r) for r in row["single_task_runs"].split(", ")]
        table.loc[i, "ms per 32 sentences (multi-task)"] = 1000 * median_latency([multi], texts)
        table.loc[i, "ms per 32 sentences (separate)"] = 1000 * median_latency(singles, texts)
    if args.json:
        print(table.to_json(orient="records", indent=2))
    else:
        print(table.drop(columns=["multi_task_run", "single_task_runs"]).to_string(index=False))


def cmd_bench(args) -> None:
    from core.bench import main as bench_main

    lines = bench_main(quick=args.quick, sections=args.sections)
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = (
            "python -m core bench"
            + (" --quick" if args.quick else "")
            + (f" --sections {args.sections}" if args.sections != BENCH_ALL else "")
        )
        with open(args.write, "w", encoding="utf-8") as fh:
            fh.write(
                f"# Benchmarks\n\nMeasured with `{command}` (the figures below are its output).\n\n```\n{text}\n```\n"
            )


BENCH_ALL = "training,dashboard,memory"


def cmd_delete(args) -> None:
    target = _store(args).delete_run(args.run)
    print(f"moved {args.run} to {target}; `python -m core restore {args.run}` brings it back")


def cmd_restore(args) -> None:
    _store(args).restore_run(args.run)
    print(f"restored {args.run}")


def run_arg(text: str) -> str:
    """A run id as typed: tab completion inside the runs folder adds a trailing slash, which is dropped. Anything
    else path-like is left for the store to refuse (``validate_run_id``)."""
    stripped = text.rstrip("/")
    return stripped if stripped and "/" not in stripped else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="FreezeLab: train and compare freezing strategies."
    )
    parser.add_argument("--runs-dir", help="runs directory (default: $FREEZELAB_RUNS_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("strategies", help="list freezing strategies with their trainable parameters")
    p.add_argument("--json", action="store_true")
    p.add_argument("--backbone", default="minilm-l6")
    p.set_defaults(func=cmd_strategies)
    sub.add_parser("datasets", help="list built-in datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("backbones", help="list built-in backbones").set_defaults(func=cmd_backbones)
    p = sub.add_parser("train", help="train one run in the foreground")
    add_config_options(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    for name, func, text in (
        ("show", cmd_show, "show one run"),
        ("delete", cmd_delete, "move a run to the trash"),
        ("restore", cmd_restore, "bring a deleted run back"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", type=run_arg)
        if name == "show":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("predict", help="predict both tasks for sentences with a trained run")
    p.add_argument("run", type=run_arg)
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("int8", help="measure how often int8 agrees with full precision on a run's test sentences")
    p.add_argument("run", type=run_arg)
    p.set_defaults(func=cmd_int8)
    p = sub.add_parser("export", help="write a run as a sentence-transformers folder (heads and README included)")
    p.add_argument("run", type=run_arg)
    p.add_argument("dir", help="the folder to write (absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in that folder")
    p.set_defaults(func=cmd_export)
    for name, func, text in (
        ("submit", cmd_submit, "queue a run; a background runner trains it"),
        ("sweep", cmd_sweep, "queue strategies x seeds (x backbones, x freeze depths)"),
    ):
        p = sub.add_parser(name, help=text)
        add_config_options(p)
        p.add_argument("--backend", choices=BACKENDS, default="local")
        p.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
        p.add_argument("--concurrency", type=int, help="runs at once on this machine (default 1)")
        if name == "sweep":
            p.add_argument("--strategies", default="all", help="comma-separated ids, or all")
            p.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
            p.add_argument("--backbones", help="comma-separated backbone specs")
            p.add_argument("--freeze-layers-list", help="freeze depths for freeze_lower, e.g. 2,4")
            p.add_argument(
                "--separate-models",
                action="store_true",
                help="also train each task alone with the same settings, to compare with multi-task",
            )
            p.add_argument(
                "--vary", action="append", default=[], metavar="KEY=V1,V2",
                help="one more grid dimension (repeatable): a config key or task_a.FIELD / task_b.FIELD, "
                "e.g. --vary loss_weighting=fixed,uncertainty --vary task_b.class_ratio='{\"negative\":0.1}'",
            )  # fmt: skip
        p.set_defaults(func=func)
    p = sub.add_parser("separate-report", help="multi-task against separate models (from a --separate-models sweep)")
    p.add_argument("sweep", nargs="?", default="", help="sweep id (default: all runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_separate)
    p = sub.add_parser("bench", help="measure speed and memory against a plain transformers.Trainer script")
    p.add_argument("--quick", action="store_true", help="smaller data, for a quick look")
    p.add_argument(
        "--sections", default=BENCH_ALL, help="comma-separated: training, heads, prediction, dashboard, memory"
    )
    p.add_argument("--write", help="also write the figures to this file, e.g. BENCHMARKS.md")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("queue", help="show the runner, running and queued runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_queue)
    p = sub.add_parser("cancel", help="drop a queued run or stop a running one (checkpoint kept)")
    p.add_argument("run", type=run_arg)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for it to stop")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("resume", help="continue a stopped or failed run from its last checkpoint")
    p.add_argument("run", type=run_arg)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("runner", help="serve the queue in the foreground (submit starts one for you)")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--idle-exit", type=float, default=120.0, help="exit after this many idle seconds")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between stop flag, SIGTERM and SIGKILL")
    p.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_runner)
    from core.cli_study import add_study_parser

    add_study_parser(sub, add_config_options)
    p = sub.add_parser("_work")  # one run in this process; what the runner starts
    p.add_argument("run", type=run_arg)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_work)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # e.g. `python -m core runs | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FreezeLabError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
