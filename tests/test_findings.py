"""core.findings and core.report on a real run store holding synthetic completed runs with known numbers.

Nothing trains: each run is created through the store (config, status lifecycle, summary, metrics, test
predictions) exactly as a finished run leaves it, and the study's runs list points at them."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from scipy import stats as sps

from core import stats, studies
from core.config import RunConfig
from core.findings import analyse, seeds_to_settle
from core.records import RunState, RunSummary, TaskSummary
from core.report import chart_spec, figures, write_report
from core.study_values import collect
from tests.conftest import tiny_config

TOPIC_LABELS = ["business", "entertainment", "politics", "sport", "tech"]
SENTIMENT_LABELS = ["negative", "positive"]
N_TEST = 200
# Test examples per run where a test is about seed-to-seed statistics: enough that the test-set floor
# (core.stats.with_test_floor, ±0.3 points here) stays below the seed spread. tests/test_noise_floor.py covers it.
LARGE_TEST = 100_000


class Lab:
    """A study whose runs are written by hand into a real RunStore."""

    def __init__(self, store, designs=("speed",), seeds=(0, 1, 2), threshold=0.01, n_test=LARGE_TEST, **base):
        self.store = store
        self.n_test = n_test
        self.study = studies.create_study(
            store, tiny_config(**base), designs=list(designs), seeds=list(seeds), threshold=threshold
        )
        base_cfg = RunConfig.from_dict(self.study.base_config)
        self.planned = {
            (p.design, p.cell, p.seed): p for p in studies.plan(self.study.design_objects(), base_cfg, list(seeds))
        }

    def run(
        self,
        design,
        cell,
        seed,
        *,
        acc=(0.80, 0.70),
        train_seconds=10.0,
        wall_seconds=None,
        trainable=1_000,
        total=2_000,
        val=None,
        train_acc=None,
        evals=(),
        predictions=None,
        init_from=None,
        state=RunState.COMPLETED,
    ) -> str:
        cfg = self.planned[(design, cell, seed)].config
        if init_from:
            cfg.init_from = init_from
        run_id = self.store.create_run(cfg)
        self.store.transition(run_id, RunState.RUNNING, started_at=time.time())
        if state == RunState.COMPLETED:
            self.store.transition(run_id, RunState.COMPLETED, finished_at=time.time())
            val = val or acc
            tasks = {}
            for name, labels, a, v, t in zip(
                ("topic", "sentiment"), (TOPIC_LABELS, SENTIMENT_LABELS), acc, val, train_acc or (None, None)
            ):
                if a is not None:
                    tasks[name] = TaskSummary(
                        label_names=labels, test_accuracy=a, test_macro_f1=a - 0.02, val_accuracy=v,
                        train_accuracy=t, n_test=self.n_test,
                    )  # fmt: skip
            self.store.write_summary(
                run_id,
                RunSummary(
                    run_id=run_id, state="completed", strategy=cfg.strategy, train_seconds=train_seconds,
                    wall_seconds=wall_seconds or train_seconds * 1.5, trainable_params=trainable, total_params=total,
                    tokens_per_second=1000.0 / train_seconds, tasks=tasks,
                ),
            )  # fmt: skip
            if evals:
                self.store.append_metrics(run_id, *evals)
            if predictions:
                self.store.write_test_predictions(run_id, predictions)
        self.study.runs.append({"design": design, "cell": cell, "seed": seed, "run_id": run_id, "action": "new"})
        self.store.write_study(self.study.id, self.study.to_dict())
        return run_id


def _speed(lab, ref_acc, lower_acc, frozen_acc, times=None):
    """The speed design: full fine-tuning ~100 s, freeze_lower ~60 s, frozen backbone ~10 s per seed."""
    times = times or {
        "full_finetune": [100, 110, 105],
        "freeze_lower k=0": [60, 64, 61],
        "frozen_backbone": [10, 11.2, 10.4],
    }
    accs = {"full_finetune": ref_acc, "freeze_lower k=0": lower_acc, "frozen_backbone": frozen_acc}
    params = {"full_finetune": 22_000_000, "freeze_lower k=0": 11_000_000, "frozen_backbone": 2_695}
    for cell, acc in accs.items():
        for seed, a in enumerate(acc):
            lab.run("speed", cell, seed, acc=(a, 0.70 + 0.01 * seed), train_seconds=times[cell][seed],
                    trainable=params[cell])  # fmt: skip


REF = [0.90, 0.92, 0.91]


def test_means_and_intervals_equal_a_scipy_recomputation(store):
    lab = Lab(store)
    _speed(lab, REF, [0.90, 0.921, 0.912], [0.85, 0.868, 0.862])
    f = analyse(store, lab.study)
    speed = f.designs["speed"]
    for cell, values in (("full_finetune", REF), ("frozen_backbone", [0.85, 0.868, 0.862])):
        iv = speed.stat(cell, "test_accuracy:a").interval
        low, high = sps.t.interval(0.95, df=2, loc=np.mean(values), scale=sps.sem(values))
        assert iv.estimate == pytest.approx(np.mean(values))
        assert (iv.low, iv.high) == pytest.approx((low, high))
    # the paired comparison is scipy's paired t on the differences
    c = speed.comparison("frozen_backbone", "test_accuracy:a").comparison
    res = sps.ttest_rel([0.85, 0.868, 0.862], REF)
    assert c.estimate == pytest.approx(np.mean(np.subtract([0.85, 0.868, 0.862], REF)))
    assert c.p_value == pytest.approx(res.pvalue)
    # speed-up is reference time / cell time, as a geometric mean over seeds
    r = speed.comparison("frozen_backbone", "train_seconds").comparison
    assert r.estimate == pytest.approx(math.exp(np.mean(np.log(np.divide([100, 110, 105], [10, 11.2, 10.4])))))
    assert "faster than full_finetune" in speed.comparison("frozen_backbone", "train_seconds").sentence
    # the long table
    table = collect(store, lab.study)
    assert set(table.columns) >= {
        "design",
        "cell",
        "group",
        "series",
        "x",
        "seed",
        "run_id",
        "state",
        "metric",
        "value",
    }
    rows = table[(table.cell == "frozen_backbone") & (table.metric == "train_seconds")].sort_values("seed")
    assert rows.value.tolist() == [10, 11.2, 10.4]


def test_verdicts_follow_the_seeds_and_become_unsettled_with_spread(store, tmp_path):
    lab = Lab(store)
    _speed(lab, REF, [0.90, 0.921, 0.912], [0.85, 0.868, 0.862])
    speed = analyse(store, lab.study).designs["speed"]
    assert speed.comparison("frozen_backbone", "test_accuracy:a").status == "worse"
    assert speed.comparison("frozen_backbone", "train_seconds").status == "better"
    assert speed.comparison("frozen_backbone", "train_seconds").phrase == "trains 10x [9.6, 10] faster"  # 2 digits
    assert "loses 5.0" in speed.comparison("frozen_backbone", "test_accuracy:a").sentence

    from core.store import RunStore

    noisy = RunStore(tmp_path / "noisy")
    lab2 = Lab(noisy)
    _speed(lab2, REF, [0.90, 0.921, 0.912], [0.80, 0.92, 0.86])  # differences -0.10, 0.00, -0.05
    speed2 = analyse(noisy, lab2.study).designs["speed"]
    acc = speed2.comparison("frozen_backbone", "test_accuracy:a")
    assert acc.status == "unsettled" and acc.tag == "within noise"
    assert "within noise" in acc.sentence and "seeds would settle it" in acc.sentence
    advice = seeds_to_settle(analyse(noisy, lab2.study))["speed"]
    needed = dict(((cell, metric), n) for _, cell, metric, n in advice.comparisons)
    assert needed[("frozen_backbone", "test_accuracy:a")] == acc.verdict.seeds_needed > 3
    assert advice.max_seeds == max(n for n in needed.values() if n is not None)


def test_holm_runs_over_a_questions_comparisons_and_downgrades(store):
    # threshold 0.1 points: freeze_lower's +5 points clears it with an unadjusted p of about 0.013, which Holm
    # over the question's noisy comparisons pushes above 0.05
    lab = Lab(store, threshold=0.001)
    noisy_times = {
        "full_finetune": [100, 90, 120],
        "freeze_lower k=0": [95, 110, 100],
        "frozen_backbone": [80, 120, 100],
    }
    _speed(lab, REF, [0.94, 0.97, 0.97], [0.88, 0.95, 0.89], times=noisy_times)
    f = analyse(store, lab.study)
    family = [c for c in f.comparisons if not c.derived]
    assert f.n_tests == len([c for c in family if c.comparison.p_value is not None]) > 4
    expected = stats.holm([c.comparison.p_value for c in family])
    assert [c.p_adjusted for c in family] == pytest.approx(expected)
    lower = f.designs["speed"].comparison("freeze_lower k=0", "test_accuracy:a")
    assert lower.raw.status == "better" and lower.comparison.p_value < 0.05
    assert lower.p_adjusted > 0.05
    assert lower.status == "unsettled" and lower.downgraded
    assert "Holm" in lower.sentence and f"over {f.n_tests} comparisons" in lower.sentence


def _predictions(n_right, labels):
    labels = list(labels)
    predicted = [y if i < n_right else (y + 1) % 5 for i, y in enumerate(labels)]
    return {"labels": labels, "predictions": predicted}


def test_one_seed_uses_the_bootstrap_and_says_so(store):
    lab = Lab(store, seeds=(0,), n_test=N_TEST)
    labels = [i % 5 for i in range(N_TEST)]
    right = {"full_finetune": 180, "freeze_lower k=0": 178, "frozen_backbone": 150}
    for cell, n in right.items():
        lab.run("speed", cell, 0, acc=(n / N_TEST, 0.7), predictions={"topic": _predictions(n, labels)},
                train_seconds={"full_finetune": 100, "freeze_lower k=0": 60, "frozen_backbone": 10}[cell])  # fmt: skip
    f = analyse(store, lab.study)
    c = f.designs["speed"].comparison("frozen_backbone", "test_accuracy:a")
    assert c.bootstrap and "bootstrap" in c.comparison.method
    assert "1 seed: paired bootstrap over 200 test examples" in c.sentence
    ref_correct = [1.0 if i < 180 else 0.0 for i in range(N_TEST)]
    cell_correct = [1.0 if i < 150 else 0.0 for i in range(N_TEST)]
    boot = stats.bootstrap_accuracy_difference(cell_correct, ref_correct)
    # 200 sentences resolve 0.75 against 0.90 only to ±7.3 points, wider than the bootstrap: the floor holds
    expected = stats.with_test_floor(boot, (0.75, N_TEST), (0.90, N_TEST))
    assert expected.widened and expected.high - expected.low > boot.high - boot.low
    assert c.comparison.estimate == pytest.approx(-0.15)
    assert c.comparison.p_value == pytest.approx(expected.p_value)
    assert (c.comparison.low, c.comparison.high) == pytest.approx((expected.low, expected.high))
    assert c.status == "worse"
    # task B has no stored predictions: one seed, no interval, unsettled
    b = f.designs["speed"].comparison("frozen_backbone", "test_accuracy:b")
    assert not b.bootstrap and b.status == "unsettled" and "no interval" in b.sentence
    assert "bootstrap over test examples" in f.designs["speed"].answer
    advice = seeds_to_settle(f)["speed"]
    assert advice.max_seeds == 3


def test_recommendation_picks_the_cheaper_cell_within_noise(store, tmp_path):
    lab = Lab(store)
    _speed(lab, REF, [0.89, 0.93, 0.90], [0.88, 0.93, 0.915])  # both within noise of full fine-tuning
    rec = next(r for r in analyse(store, lab.study).designs["speed"].recommendations if r.task == "topic")
    assert rec.cell == "frozen_backbone" and rec.best == "full_finetune"
    assert "trains 10x [9.6, 10] faster" in rec.sentence and "2,695 instead of 22,000,000" in rec.sentence
    # when the frozen backbone is clearly worse, the next cheapest cell that is not worse is picked
    from core.store import RunStore

    other = RunStore(tmp_path / "other")
    lab2 = Lab(other)
    _speed(lab2, REF, [0.89, 0.93, 0.90], [0.85, 0.868, 0.862])
    rec2 = next(r for r in analyse(other, lab2.study).designs["speed"].recommendations if r.task == "topic")
    assert rec2.cell == "freeze_lower k=0" and rec2.candidates["frozen_backbone"] == "worse"


def test_report_holds_the_verdicts_and_links_existing_charts(store, tmp_path):
    lab = Lab(store)
    _speed(lab, REF, [0.90, 0.921, 0.912], [0.85, 0.868, 0.862])
    f = analyse(store, lab.study)
    path = write_report(store, lab.study, f, out_dir=tmp_path / "report")
    text = path.read_text()
    assert path.name == "report.md" and text.startswith("# Study report")
    for c in f.comparisons:
        if not c.derived:
            assert c.sentence in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((path.parent / link).is_file() for link in links)
    assert "Holm within each question" in text and "| seeds |" in text and "Answer." in text
    default = write_report(store, lab.study, f)
    assert default.parent == store.study_report_dir(lab.study.id) and default.is_file()
    figs = figures(f)
    assert set(figs) == {"speed"} and len(figs["speed"].data) > 0


def test_drift_reads_each_runs_own_source(store):
    lab = Lab(store, designs=("head_drift",))
    source_acc = [0.80, 0.70, 0.60]
    sources = [lab.run("head_drift", "two-task source", s, acc=(a, 0.7)) for s, a in enumerate(source_acc)]
    control = [0.81, 0.71, 0.61]
    frozen = [0.75, 0.66, 0.55]
    for s in range(3):
        lab.run("head_drift", "control: keep training both tasks", s, acc=(control[s], 0.72), init_from=sources[s])
        lab.run("head_drift", "freeze head A, train B", s, acc=(frozen[s], 0.74), init_from=sources[s])
    table = collect(store, lab.study)
    drift = table[table.metric == "drift:a"]
    got = {(r.cell, r.seed): r.value for r in drift.itertuples()}
    for s in range(3):
        assert got[("control: keep training both tasks", s)] == pytest.approx(control[s] - source_acc[s])
        assert got[("freeze head A, train B", s)] == pytest.approx(frozen[s] - source_acc[s])
    assert not any(cell == "two-task source" for cell, _ in got)  # no init_from: no drift
    d = analyse(store, lab.study).designs["head_drift"]
    c = d.comparison("freeze head A, train B", "drift:a")
    assert c.comparison.estimate == pytest.approx(np.mean(np.subtract(frozen, control)))
    assert c.status == "worse"
    assert not d.recommendations and "from its source run" in d.answer


def _eval(task, step, wall, accuracy, split="validation", kind="eval"):
    return {"kind": kind, "split": split, "step": step, "epoch": step / 100, "wall_seconds": wall, "task": task,
            "accuracy": accuracy, "macro_f1": accuracy, "loss": 1 - accuracy}  # fmt: skip


def test_time_to_val_uses_the_first_validation_eval_reaching_the_reference_level(store):
    lab = Lab(store)
    for s in range(3):  # reference: final validation accuracy 0.80 -> LEVEL = 0.76
        lab.run("speed", "full_finetune", s, acc=(0.9, 0.7), val=(0.80, 0.70), train_seconds=100,
                evals=[_eval("topic", 50, 40.0 + s, 0.78), _eval("topic", 100, 80.0, 0.80)])  # fmt: skip
        lab.run(
            "speed", "frozen_backbone", s, acc=(0.9, 0.7), train_seconds=10,
            evals=[
                _eval("sentiment", 5, 1.0, 0.99),  # another task: ignored
                _eval("topic", 5, 2.0, 0.99, split="test"),  # another split: ignored
                _eval("topic", 5, 2.5, 0.99, kind="train"),  # not an evaluation: ignored
                _eval("topic", 10, 5.0, 0.70),
                _eval("topic", 20, 9.0 + s, 0.77),  # first to reach 0.76
                _eval("topic", 30, 12.0, 0.90),
            ],
        )  # fmt: skip
        lab.run("speed", "freeze_lower k=0", s, acc=(0.9, 0.7), train_seconds=60,
                evals=[_eval("topic", 10, 5.0, 0.70)])  # never reaches the level  # fmt: skip
    table = collect(store, lab.study)
    assert table.attrs["levels"]["speed//a"] == pytest.approx(0.76)

    def values(cell, metric):
        rows = table[(table.cell == cell) & (table.metric == metric)].sort_values("seed")
        return rows.value.tolist()

    assert values("frozen_backbone", "time_to_val:a") == [9.0, 10.0, 11.0]
    assert values("frozen_backbone", "steps_to_val:a") == []  # the speed design measures time, not steps
    assert values("full_finetune", "time_to_val:a") == [40.0, 41.0, 42.0]
    assert values("freeze_lower k=0", "time_to_val:a") == []
    never = table.attrs["never_reached"]
    assert {(r["cell"], r["metric"]) for r in never} >= {("freeze_lower k=0", "time_to_val:a")}
    d = analyse(store, lab.study).designs["speed"]
    c = d.comparison("frozen_backbone", "time_to_val:a")
    assert c.comparison.estimate == pytest.approx(math.exp(np.mean(np.log(np.divide([40, 41, 42], [9, 10, 11])))))
    assert "reaches the topic validation level" in c.phrase and "sooner" in c.phrase
    assert "Never reached the validation level" in d.answer and "freeze_lower k=0" in d.answer


def test_missing_and_unfinished_runs_are_left_out_and_counted(store):
    lab = Lab(store)
    for cell in ("full_finetune", "frozen_backbone"):
        for s in range(3):
            lab.run("speed", cell, s)
    lab.run("speed", "freeze_lower k=0", 0)
    lab.run("speed", "freeze_lower k=0", 1, state=RunState.RUNNING)
    # seed 2 of freeze_lower was never launched
    table = collect(store, lab.study)
    assert table.attrs["left_out"]["speed"] == {"unfinished": 1, "missing": 1}
    assert set(table[table.cell == "freeze_lower k=0"].seed) == {0}
    f = analyse(store, lab.study)
    assert f.designs["speed"].left_out == {"unfinished": 1, "missing": 1}


def test_overfitting_answer_finds_where_the_curves_cross(store):
    lab = Lab(store, designs=("overfitting",))
    shift = {100: 0.05, 300: 0.0, 1000: -0.05}
    noise = [0.0, 0.004, -0.003]
    for n, d in shift.items():
        for s in range(3):
            lab.run("overfitting", f"full_finetune n={n}", s, acc=(0.80 + 0.01 * s, 0.7), train_acc=(0.99, 0.9))
            lab.run("overfitting", f"frozen_backbone n={n}", s, acc=(0.80 + 0.01 * s + d + noise[s], 0.7),
                    train_acc=(0.85, 0.8))  # fmt: skip
            lab.run("overfitting", f"freeze_lower k=0 n={n}", s, acc=(0.80 + 0.01 * s + [0.01, -0.01, 0.0][s], 0.7),
                    train_acc=(0.95, 0.85))  # fmt: skip
    d = analyse(store, lab.study).designs["overfitting"]
    assert "frozen_backbone against full_finetune: better at n=100" in d.answer
    assert "the curves cross between n=100 and n=1,000" in d.answer
    assert "freeze_lower k=0 against full_finetune" in d.answer and "no crossing within noise" in d.answer
    gap = d.comparison("frozen_backbone n=100", "train_val_gap:a")
    # gap = train accuracy - validation accuracy: (0.85 - frozen's) - (0.99 - full fine-tuning's)
    assert gap.comparison.estimate == pytest.approx(-0.14 - 0.05 - np.mean(noise))
    assert gap.status == "better"  # a smaller gap is better
    assert "narrows the topic train-validation gap by 19.0" in gap.phrase


def test_freeze_depth_answers_lee_et_al(store):
    lab = Lab(store, designs=("freeze_depth",), backbone="minilm-l6")  # 6 layers: top quarter = k=4
    share = {0: 1.0, 1: 1.0, 2: 0.99, 3: 0.97, 4: 0.93, 5: 0.85, 6: 0.60}
    share_b = {k: min(1.0, v - 0.2 * (k >= 4)) for k, v in share.items()}
    for s in range(3):
        ref_a, ref_b = 0.90 + 0.01 * s, 0.80
        lab.run("freeze_depth", "full_finetune", s, acc=(ref_a, ref_b), train_seconds=100)
        for k, v in share.items():
            wiggle = [0.0, 0.002, -0.002][s]
            lab.run("freeze_depth", f"freeze_lower k={k}", s, acc=(ref_a * (v + wiggle), ref_b * (share_b[k] + wiggle)),
                    train_seconds=100 - 10 * k)  # fmt: skip
    f = analyse(store, lab.study)
    d = f.designs["freeze_depth"]
    kept = d.comparison("freeze_lower k=4", "share_kept:a")
    assert kept.comparison.estimate == pytest.approx(0.93, abs=0.002) and kept.derived
    parent = d.comparison("freeze_lower k=4", "test_accuracy:a")
    assert kept.p_adjusted == parent.p_adjusted  # a restatement, not a test of its own
    assert d.lee == {"topic": "reproduced", "sentiment": "refuted"}
    assert "k=4 (2 of 6 layers train)" in d.answer and "reproduced" in d.answer and "refuted" in d.answer
    spec = chart_spec(d, f)
    titles = [p.title for p in spec.panels]
    assert any("share" in t for t in titles) and any("training time" in t for t in titles)


def test_accuracy_axes_do_not_magnify_noise(store):
    lab = Lab(store)
    _speed(lab, REF, [0.90, 0.921, 0.912], [0.905, 0.915, 0.91])  # all within 2 points
    f = analyse(store, lab.study)
    spec = chart_spec(f.designs["speed"], f)
    acc_panels = [p for p in spec.panels if p.accuracy_axis]
    assert acc_panels
    for p in acc_panels:
        lo, hi = p.y_range
        chance = 100 * f.chance["a" if "topic" in p.title else "b"]
        assert hi - lo >= 10 - 1e-9 or lo == pytest.approx(chance)


def test_a_study_without_finished_runs_reads_as_such(store, tmp_path):
    lab = Lab(store)
    lab.run("speed", "full_finetune", 0, state=RunState.RUNNING)
    f = analyse(store, lab.study)
    speed = f.designs["speed"]
    assert speed.left_out == {"unfinished": 1, "missing": 8}
    assert not speed.comparisons and speed.answer.startswith("No completed runs yet")
    assert seeds_to_settle(f) == {}
    path = write_report(store, lab.study, f, out_dir=tmp_path / "empty")
    assert "No completed runs yet" in path.read_text() and not list(path.parent.glob("*.png"))
    assert "no completed runs yet" in figures(f)["speed"].layout.title.text


def test_plotly_figures_show_what_the_png_shows(store):
    lab = Lab(store, designs=("speed", "head_drift"))
    _speed(lab, REF, [0.90, 0.921, 0.912], [0.85, 0.868, 0.862])
    sources = [lab.run("head_drift", "two-task source", s, acc=(0.8, 0.7)) for s in range(3)]
    for s in range(3):
        lab.run("head_drift", "control: keep training both tasks", s, acc=(0.81, 0.72), init_from=sources[s])
        lab.run("head_drift", "freeze head A, train B", s, acc=(0.75 + 0.01 * s, 0.74), init_from=sources[s])
    f = analyse(store, lab.study)
    figs = figures(f)
    assert set(figs) == {"speed", "head_drift"}
    for design_id, fig in figs.items():
        spec = chart_spec(f.designs[design_id], f)
        ranges = [p.y_range for p in spec.panels]
        axes = [fig.layout[f"yaxis{'' if i == 0 else i + 1}"] for i in range(len(spec.panels))]
        for want, axis in zip(ranges, axes, strict=True):
            if want is not None:
                assert tuple(axis.range) == pytest.approx(want)
        titles = [a.text for a in fig.layout.annotations][: len(spec.panels)]
        assert titles == [p.title for p in spec.panels]
    # bars of accuracy grow from chance level (2 classes: 50%) in both renderers
    drift = chart_spec(f.designs["head_drift"], f)
    sentiment = next(p for p in drift.panels if p.title == "sentiment test accuracy")
    assert sentiment.y_range[0] == pytest.approx(50.0) and sentiment.traces[0].base == pytest.approx(50.0)
