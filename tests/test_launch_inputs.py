"""Launch page input defects, through AppTest on the real page: the k slider follows the backbone's depth, bad
uploads and unreadable backbones are said next to their field, learning rates step and show what they store,
split-size advice names the real cause, and too many classes for the rows are flagged before a run is queued."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard_fixtures import app, no_problem, one

STORED_NAME = re.compile(r"\b[0-9a-f]{12}-")  # how core.uploads names its stored copy of an upload


def launch_button(at: AppTest):
    found = [b for b in at.button if b.label.startswith("Launch (")]
    assert len(found) == 1, [b.label for b in at.button]
    return found[0]


def column_with(at: AppTest, widget: str, key: str):
    """The innermost column holding the widget of this key (where its field's messages must sit)."""
    found = [c for c in at.columns if any(w.key == key for w in getattr(c, widget))]
    assert found, f"no column holds {widget} {key!r}"
    return found[-1]


def upload(at: AppTest, name: str, data: bytes, letter: str = "A") -> None:
    at.radio(key=f"src_{letter}").set_value("Upload a file").run()
    [u for u in at.file_uploader if u.key == f"up_{letter}"][0].upload(name, data, "application/octet-stream")
    at.run()
    assert not at.exception, at.exception


def rows(n: int, label=lambda i: "pos" if i % 2 else "neg") -> bytes:
    return ("text,label\n" + "".join(f"sentence number {i} of the file,{label(i)}\n" for i in range(n))).encode()


def the_rest_is_there(at: AppTest) -> None:
    """Task B, the settings, What trains and both launch controls are still drawn."""
    assert at.text_input(key="name_B").value == "sentiment"
    assert {e.label for e in at.expander} >= {"Training settings", "Imbalance"}
    assert "What trains" in [s.value for s in at.subheader]
    assert [b.label for b in at.button if b.label == "Queue the sweep"], "the sweep popover is drawn"


# -- defect 1: the k slider and the backbone ---------------------------------------------------------------
def test_k_slider_ends_at_the_backbones_depth_and_a_deeper_k_is_lowered(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Strategy").set_value("freeze_lower").run()
    slider = at.slider(key="freeze_layers")
    assert (slider.min, slider.max, slider.value) == (0, 6, 3), "the packaged MiniLM has 6 layers"
    slider.set_value(6).run()
    no_problem(at)

    one(at.selectbox, "Backbone").set_value("minilm-l6:2").run()
    no_problem(at)
    slider = at.slider(key="freeze_layers")
    assert (slider.max, slider.value) == (2, 2), "k=6 on a 2-layer cut becomes its deepest k"
    assert any("lowered from 6 to 2" in c.value for c in at.caption), [c.value for c in at.caption]
    assert at.metric, "What trains shows its counts"
    assert launch_button(at).label == "Launch (1 run)" and not launch_button(at).disabled
    the_rest_is_there(at)

    one(at.selectbox, "Backbone").set_value("minilm-l6").run()
    no_problem(at)
    assert at.slider(key="freeze_layers").max == 6 and at.slider(key="freeze_layers").value == 2


@pytest.mark.parametrize("folder", ["missing", "no-config"])
def test_an_unreadable_backbone_is_said_under_its_field_and_launch_stays_off(monkeypatch, tmp_path, folder):
    path = tmp_path / "nope-model"
    if folder == "no-config":
        path.mkdir()
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Strategy").set_value("freeze_lower").run()
    one(at.selectbox, "Backbone").set_value("Other: a model folder or hub id").run()
    one(at.text_input, "Model folder or hub id").set_value(str(path)).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "nope-model" in errors[0], errors
    assert ("config.json" if folder == "no-config" else "could not be loaded") in errors[0], errors
    assert [e.value for e in column_with(at, "selectbox", "backbone").error] == errors, "under the Backbone field"
    assert launch_button(at).disabled and not at.metric
    the_rest_is_there(at)

    one(at.selectbox, "Backbone").set_value("minilm-l6:2").run()
    no_problem(at)
    assert not launch_button(at).disabled


# -- defect 2: a bad upload ----------------------------------------------------------------------------------
BAD_FILES = [
    ("empty.csv", b"", "is empty"),
    ("header.csv", b"text,label\n", "is empty"),
    ("quote.csv", b'text,label\n"unterminated quote,a\nb,c,d,e\n' * 3, "could not be read"),
    ("lines.jsonl", b'{"text": "ok", "label": "a"}\n{"text": broken\n', "could not be read"),
    ("fake.parquet", rows(20), "Parquet"),
]


@pytest.mark.parametrize(("name", "data", "says"), BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_a_bad_upload_is_said_under_its_uploader_in_the_users_file_name(monkeypatch, tmp_path, name, data, says):
    runs = tmp_path / "runs"
    at = app(monkeypatch, runs)
    upload(at, name, data)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and name in errors[0] and says in errors[0], errors
    assert not STORED_NAME.search(errors[0]) and str(runs.resolve()) not in errors[0] and "uploads" not in errors[0]
    assert [e.value for e in column_with(at, "file_uploader", "up_A").error] == errors, "under Task A's uploader"
    assert launch_button(at).disabled
    the_rest_is_there(at)

    upload(at, "good.csv", rows(200))  # a fixed file: the error goes and Launch comes back
    no_problem(at)
    assert not launch_button(at).disabled


# -- defect 3: learning rates ------------------------------------------------------------------------------
def test_learning_rates_step_in_proportion_and_show_what_they_store(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    body = one(at.number_input, "Backbone learning rate")
    assert body.value == 5e-5
    body.increment().run()
    assert 5e-5 < one(at.number_input, "Backbone learning rate").value <= 1e-4, "'+' is not a jump to 1e-2"
    head = one(at.number_input, "Head learning rate")
    assert head.value == 3e-2
    head.increment().run()
    assert 3e-2 < one(at.number_input, "Head learning rate").value <= 6e-2

    one(at.number_input, "Head learning rate").set_value(0.00015).run()
    no_problem(at)
    for label, stored in (("Head learning rate", 0.00015), ("Backbone learning rate", 6e-5)):
        field = one(at.number_input, label)
        assert field.value == pytest.approx(stored, rel=1e-12)
        # The browser prints the value with this printf format: it must read back as the value stored.
        assert float(field.format % field.value) == pytest.approx(field.value, rel=1e-12), field.format


# -- defect 4: advice for small splits -------------------------------------------------------------------
def test_small_splits_from_the_users_caps_advise_raising_the_caps(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    one(at.number_input, "Validation sentences per task").set_value(20).run()
    one(at.number_input, "Test sentences per task (0 = all)").set_value(40).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2, warnings  # one per task
    for text in warnings:
        assert "Only 20 validation and 40 test" in text
        assert "'Validation sentences per task' from 20" in text and "'Test sentences per task' from 40" in text
        assert "file" not in text and "add rows" not in text, text
    assert not launch_button(at).disabled, "a warning, not a refusal"


def test_small_splits_of_a_file_advise_adding_rows(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    upload(at, "sixty.csv", rows(60))
    task_a = [w.value for w in column_with(at, "file_uploader", "up_A").warning]
    assert len(task_a) == 1 and "6 test" in task_a[0] and "add rows to the file" in task_a[0], task_a
    assert "raise" not in task_a[0], "the default caps do not keep these splits small"


# -- defect 5: classes for the rows ------------------------------------------------------------------------
def test_a_class_per_row_is_refused_under_the_upload(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    upload(at, "many.csv", rows(100, label=lambda i: f"class{i}"))
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "many.csv" in errors[0] and "100 classes for 100 rows" in errors[0], errors
    assert "label_column" not in errors[0] and not STORED_NAME.search(errors[0]), errors
    assert [e.value for e in column_with(at, "file_uploader", "up_A").error] == errors
    assert launch_button(at).disabled
    the_rest_is_there(at)


def test_few_rows_per_class_get_a_warning_and_launch_stays_on(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    upload(at, "three-each.csv", rows(300, label=lambda i: f"class{i % 100}"))
    no_problem(at)
    warnings = [w.value for w in column_with(at, "file_uploader", "up_A").warning]
    assert any("three-each.csv" in w and "100 classes for 300 rows" in w for w in warnings), warnings
    assert not launch_button(at).disabled, "3 rows a class: a warning, not a refusal"
