"""`python -m core study run|status|report|list`: the seeds' questions as designed studies (core/studies.py)."""

from __future__ import annotations

import argparse
import sys

from core.store import RunStore, default_runs_dir


def _store(args) -> RunStore:
    return RunStore(args.runs_dir or default_runs_dir())


def _seeds(text: str) -> list[int]:
    from core.errors import ConfigError

    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None


TRAINING_SIZE_OPTIONS = ("max_train_examples", "task_a_max_train_examples", "task_b_max_train_examples")


def _refuse_training_sizes(args) -> None:
    """Every built-in question sets the training examples per task from the scale (a size ladder, a cut Task B):
    an option that sets them would be silently overwritten, so it is refused before anything is created."""
    from core import studies
    from core.errors import ConfigError

    given = ["--" + o.replace("_", "-") for o in TRAINING_SIZE_OPTIONS if getattr(args, o, None) is not None]
    if given:
        scales = sorted(studies.SCALES.values(), key=lambda s: s.train_examples)
        raise ConfigError(
            f"study run: {' and '.join(given)} would have no effect: each question sets the training examples per "
            f"task from --scale ({', '.join(f'{s.name} {s.train_examples:,}' for s in scales)}; the overfitting "
            "question runs a ladder of sizes). Drop the option and pick a scale."
        )


def cmd_study_run(args) -> None:
    """Create a study (or continue one by id) and queue what it still needs."""
    from core import studies
    from core.cli import config_from_args, given_keys
    from core.study_values import fmt_seconds

    store = _store(args)
    _refuse_training_sizes(args)  # new or continued, the study's scale decides the sizes
    if args.study:
        study = studies.load_study(store, args.study)
    else:
        given = given_keys(args)
        base = studies.scaled_base(config_from_args(args, store), args.scale, given)
        scale = studies.SCALES[args.scale]
        kept = sorted(set(scale.run_settings) & given)
        print(f"scale {args.scale}: {scale.train_examples:,} training examples per task (the questions size "
              "their runs from it)" + (f"; sets {scale.describe_settings()}" if scale.run_settings else "")
              + (f"; kept your own {', '.join(kept)}" if kept else ""), file=sys.stderr)  # fmt: skip
        designs = list(studies.QUESTIONS) if args.questions == "all" else [q.strip() for q in args.questions.split(",")]
        study = studies.create_study(store, base, designs=designs, scale=args.scale, seeds=_seeds(args.seeds),
                                     name=args.study_name or "", threshold=args.threshold / 100)  # fmt: skip
    base_plan = studies.plan(study.design_objects(), studies.RunConfig.from_dict(study.base_config), study.seeds)
    studies.match_existing(store, base_plan)
    est = studies.estimate(store, base_plan)
    planned = studies.launch(store, study, start_runner=not args.no_runner)
    actions = {a: sum(p.action == a for p in planned) for a in ("new", "reuse", "resume")}
    print(f"study {study.id}: {len(planned)} runs ({actions['new']} queued, {actions['reuse']} reused, "
          f"{actions['resume']} resumed); estimated {fmt_seconds(est['total_seconds'])} ({est['basis']})",
          file=sys.stderr)  # fmt: skip
    print(study.id)


def cmd_study_status(args) -> None:
    from core import studies

    store = _store(args)
    study = studies.load_study(store, args.study)
    counts = studies.progress(store, study)
    print(f"{study.id}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


def cmd_study_report(args) -> None:
    from core import studies
    from core.findings import analyse
    from core.report import write_report

    store = _store(args)
    study = studies.load_study(store, args.study)
    findings = analyse(store, study)
    if args.format == "text":
        for d in findings.designs.values():
            print(f"## {d.design.question}\n{d.answer}")
            for c in d.comparisons:
                if not c.derived:
                    print(f"- [{c.status}] {c.sentence}")
            for r in d.recommendations:
                print(f"- recommendation: {r.sentence}")
            print()
        return
    path = write_report(store, study, findings, out_dir=args.out)
    print(path)


def cmd_study_list(args) -> None:
    from core import studies

    store = _store(args)
    ids = store.study_ids()
    if not ids:
        print("no studies yet: `python -m core study run --questions speed`")
    for study_id in ids:
        study = studies.load_study(store, study_id)
        counts = studies.progress(store, study)
        print(f"{study_id:<60} {', '.join(study.designs) or 'custom':<40} "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))  # fmt: skip


def add_study_parser(sub, add_config_options) -> None:
    from core import studies  # light (no torch): its scales are the --scale choices

    p = sub.add_parser("study", help="run a designed study that answers a question with intervals")
    ssub = p.add_subparsers(dest="study_command", required=True)
    r = ssub.add_parser("run", help="create and queue a study (or continue one: --study ID)")
    add_config_options(r)
    r.add_argument("--questions", default="all", help="comma-separated: speed, overfitting, head_drift, "
                   "freeze_depth, pretraining, backbone, multitask, imbalance, class_imbalance; or all")  # fmt: skip
    scales = sorted(studies.SCALES, key=lambda s: studies.SCALES[s].train_examples)  # lite, quick, full
    r.add_argument("--scale", default="quick", choices=scales,
                   help="training examples per task: lite 300, quick 1,000 (the default), full 3,000; lite also sets 64 tokens, "
                   "100 validation and 500 test sentences per task and an evaluation every 10 steps, unless an "
                   "option, --set or config-file key says otherwise")  # fmt: skip
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--threshold", type=float, default=1.0, help="practical difference in points (default 1)")
    r.add_argument("--study-name", help="a name for the study")
    r.add_argument("--study", help="continue this study id (queue what is missing)")
    r.add_argument("--no-runner", action="store_true", help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_study_run)
    for name, func, text in (("status", cmd_study_status, "runs per state"),
                             ("report", cmd_study_report, "verdicts, charts and a markdown report")):  # fmt: skip
        q = ssub.add_parser(name, help=text)
        q.add_argument("study")
        if name == "report":
            q.add_argument("--format", choices=["md", "text"], default="md")
            q.add_argument("--out", help="folder for report.md and its charts (default: the study's folder)")
        q.set_defaults(func=func)
    ssub.add_parser("list", help="list studies").set_defaults(func=cmd_study_list)
