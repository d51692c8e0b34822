"""The long fault-injection run: ``python -m tests.stress --kills 100`` (README's Reliability section).

kill -9 of training workers at ``--kills`` random moments, split between two kinds of checkpoint (a delta
over the pretrained backbone, and full weights of a from-scratch backbone: 55 MB a save, so kills land
inside writes too), plus ``--targeted`` kills placed exactly between a checkpoint's weights and its
training state. After every kill: the run is failed with the reason, its metrics parse, its checkpoint
loads; it is resumed until it completes, and every completed run must equal an uninterrupted run of the
same config bit for bit (weights and every logged loss). Prints the figures; exit code 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.faultkit import KillReport, Zygote, check_after_kill, fault_config, kill_series, wait_gone, wait_running

VARIANTS = {
    "delta checkpoints (bitfit, pretrained)": dict(backbone="minilm-l6:1"),
    "full checkpoints (bitfit, from scratch)": dict(backbone="minilm-l6-scratch:1"),
}


def _history(store, run_id):
    from core import checkpoint

    weights = checkpoint.load_weights(store.checkpoint_dir(run_id))
    losses = [(r["step"], r["task"], r["loss"]) for r in store.read_metrics(run_id) if r["kind"] == "train"]
    return weights, losses


def _same(a, b) -> bool:
    import torch

    (wa, la), (wb, lb) = a, b
    return la == lb and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _run_once(zygote, store, cfg, **inject) -> tuple[str, float]:
    run_id = store.create_run(cfg)
    pid = zygote.start(store, run_id, **inject)
    wait_running(store, run_id, pid, timeout=300)
    tick = time.time()
    wait_gone(pid, 600)
    return run_id, time.time() - tick


def targeted(zygote, store, cfg, reference, n: int, rng: random.Random, log) -> tuple[int, list[str]]:
    """Kills placed between a checkpoint's weights and its training state, at random checkpoint steps."""
    from core import jobs
    from core.records import RunState

    failures = []
    for i in range(n):
        step = rng.choice(range(cfg.checkpoint_every_steps, cfg.max_steps, cfg.checkpoint_every_steps))
        run_id = store.create_run(cfg)
        pid = zygote.start(store, run_id, die_before_train_state_step=step)
        wait_running(store, run_id, pid, timeout=300)
        wait_gone(pid, 600)
        failures += check_after_kill(store, run_id, pid)
        while store.state(run_id) != RunState.COMPLETED and not failures:
            resume = jobs.resume(store, run_id, start_runner=False) == "resume"
            pid = zygote.start(store, run_id, resume=resume)
            wait_running(store, run_id, pid, timeout=300)
            wait_gone(pid, 600)
            if store.state(run_id) == RunState.FAILED:
                failures.append(f"{run_id}: resume failed: {store.read_status(run_id).error}")
        if not failures and not _same(_history(store, run_id), reference):
            failures.append(f"{run_id}: differs from the uninterrupted run after a kill at step {step}")
        log(f"targeted {i + 1}/{n}: killed between weights and train state at step {step}")
    return n, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="random kill points in all (default 100)")
    parser.add_argument("--targeted", type=int, default=10, help="kills between weights and train state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.time()
    figures: dict = {"kills": 0, "survived": 0, "targeted": 0, "runs": 0, "identical": 0, "phases": {}, "failures": []}
    zygote = Zygote()
    try:
        with tempfile.TemporaryDirectory(prefix="freezelab-stress-") as tmp:
            from core.store import RunStore

            for v, (variant, overrides) in enumerate(VARIANTS.items()):
                store = RunStore(Path(tmp) / f"runs{v}")
                cfg = fault_config(**overrides)
                ref_id, seconds = _run_once(zygote, store, cfg)
                reference = _history(store, ref_id)
                log(f"{variant}: uninterrupted run trains in {seconds:.1f}s")
                share = args.kills // len(VARIANTS) + (1 if v < args.kills % len(VARIANTS) else 0)
                report: KillReport = kill_series(
                    zygote, store, lambda cfg=cfg, store=store: store.create_run(cfg), share, seconds * 1.1,
                    seed=rng.randrange(2**31), log=log,
                )  # fmt: skip
                identical = sum(_same(_history(store, r), reference) for r in report.runs)
                figures["kills"] += report.kills
                figures["runs"] += len(report.runs)
                figures["identical"] += identical
                figures["failures"] += report.failures
                if identical != len(report.runs):
                    figures["failures"].append(f"{variant}: {len(report.runs) - identical} runs differ")
                for phase, n in report.phases.items():
                    figures["phases"][phase] = figures["phases"].get(phase, 0) + n
                n_targeted = args.targeted // len(VARIANTS) + (1 if v < args.targeted % len(VARIANTS) else 0)
                done, failures = targeted(zygote, store, cfg, reference, n_targeted, rng, log)
                figures["targeted"] += done
                figures["failures"] += failures
    finally:
        zygote.close()
    figures["survived"] = figures["kills"] + figures["targeted"] - len(figures["failures"])
    figures["minutes"] = round((time.time() - started) / 60, 1)
    log(
        f"\n{figures['kills']} random kill points + {figures['targeted']} between weights and train state; "
        f"phases {figures['phases']}; {figures['runs']} runs, {figures['identical']} completed bit-identical to an "
        f"uninterrupted run; failed checks: {len(figures['failures'])}; {figures['minutes']} min"
    )
    for failure in figures["failures"]:
        log(f"FAILED: {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
