"""The dashboard's structure: a page renders only itself, never imports another page, never imports torch.

Importing a page runs it (a page is a script that ends in ``page()``), so a page that imports a helper
from another page renders that whole page inside itself. Shared page helpers live in pages/common.py,
logic in core/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import CheckpointError, user_message
from core.records import RunState
from core.store import RunStore
from core.train import train_run
from core.uploads import save_upload, upload_path
from tests.conftest import ROOT, tiny_config
from tests.dashboard_fixtures import APP

PAGES_DIR = ROOT / "pages"
PAGE_FILES = sorted(p for p in PAGES_DIR.glob("*.py") if p.name not in ("__init__.py", "common.py"))
HEAVY = {"torch", "transformers", "peft", "safetensors", "sentence_transformers"}

# What only one page shows: its title, and widgets or headers no other page has.
MARKS = {
    "launch": {"title": "Launch runs", "subheader": "What trains", "selectbox": "Strategy"},
    "runs": {"title": "Runs", "text_input": "Tag or name contains", "selectbox": "Run details"},
    "compare": {"title": "Compare runs", "multiselect": "States"},
    "playground": {"title": "Playground", "text_area": "Sentences, one a line", "subheader": "Predict a whole file"},
    "findings": {"title": "Findings", "multiselect": "Questions"},
}
CSV = b'review,stars\n"Shares fell sharply on Wall Street.",1\n"A warm, funny and beautifully acted film.",5\n'


# -- (a) imports, read from the source --------------------------------------------------------------------
def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, anywhere in it (functions included), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from .launch import x` inside the pages package
                base = ".".join(["pages", *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append(base)
            if base == "pages":  # `from pages import launch` imports the page module itself
                found += [f"pages.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def test_the_ast_check_sees_every_way_to_import_a_page(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pages.runs\nfrom pages.launch import save_upload\nfrom . import compare\nfrom pages import playground\n"
        "def f():\n    import importlib\n    importlib.import_module('pages.x')\n    from torch import nn\n"
    )
    found = imported_modules(sample)
    assert {"pages.runs", "pages.launch", "pages", "pages.compare", "pages.playground", "pages.x", "torch"} <= set(
        found
    )


@pytest.mark.parametrize("path", sorted(PAGES_DIR.glob("*.py")), ids=lambda p: p.name)
def test_pages_import_no_other_page_and_no_torch(path):
    modules = imported_modules(path)
    pages = [m for m in modules if (m == "pages" or m.startswith("pages.")) and m != "pages.common"]
    assert not pages, f"{path.name} imports {pages}: importing a page runs it; share helpers through pages/common.py"
    heavy = [m for m in modules if m.split(".")[0] in HEAVY]
    assert not heavy, f"{path.name} imports {heavy}: pages hold UI only, models are loaded by core"


def test_the_router_imports_only_the_shared_page_helpers():
    modules = imported_modules(Path(APP))
    assert [m for m in modules if m.startswith("pages")] == ["pages.common"]
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


# -- (b) and (c): what each page renders ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A runs folder with one really trained (tiny) run: the Playground shows everything, uploads included."""
    store = RunStore(tmp_path_factory.mktemp("structure") / "runs")
    run_id = store.create_run(tiny_config(name="structure", strategy="frozen_backbone"))
    assert train_run(store, run_id) == RunState.COMPLETED, store.read_status(run_id)
    assert store.has_checkpoint(run_id)
    return store.root


def open_page(monkeypatch, runs_dir: Path, page: str) -> AppTest:
    monkeypatch.setenv("FREEZELAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if page != "launch":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def pages_shown(at: AppTest) -> set[str]:
    """The pages whose marks (title, own widgets and headers) appear in what the app rendered."""
    shown = set()
    for page, marks in MARKS.items():
        for kind, label in marks.items():
            values = [e.value for e in at.get(kind)] if kind in ("title", "subheader") else None
            labels = [e.label for e in at.get(kind)] if values is None else values
            if label in labels:
                shown.add(page)
    if any(b.label.startswith("Launch (") for b in at.button):
        shown.add("launch")
    return shown


@pytest.mark.parametrize("page", list(MARKS))
def test_each_page_renders_only_its_own_content(monkeypatch, trained, page):
    at = open_page(monkeypatch, trained, page)
    assert not [e.value for e in at.error], [e.value for e in at.error]
    assert pages_shown(at) == {page}
    assert [t.value for t in at.title] == [MARKS[page]["title"]]
    others = {m["title"] for p, m in MARKS.items() if p != page}
    headers = [e.value for kind in ("title", "header", "subheader") for e in at.get(kind)]
    assert not others & set(headers), headers


def test_uploading_a_file_on_the_playground_stays_on_the_playground(monkeypatch, trained):
    # Importing a module happens once per process: forget any earlier import of a page so that a page
    # importing another page shows here whatever ran before this test.
    for name in [m for m in sys.modules if m.startswith("pages.") and m != "pages.common"]:
        monkeypatch.delitem(sys.modules, name)
    at = open_page(monkeypatch, trained, "playground")
    assert pages_shown(at) == {"playground"}

    at.file_uploader[0].upload("reviews.csv", CSV, "text/csv")
    at.run()
    assert not at.exception, at.exception
    assert pages_shown(at) == {"playground"}, "the upload rendered another page inside the Playground"
    assert [t.value for t in at.title] == ["Playground"]
    assert not [b.label for b in at.button if b.label.startswith("Launch")]
    assert not [s.label for s in at.selectbox if s.label in ("Strategy", "Backbone")]
    assert upload_path(trained, "reviews.csv", CSV).read_bytes() == CSV, "kept under the runs folder"

    column = [s for s in at.selectbox if s.label == "Text column"]
    assert len(column) == 1 and column[0].options == ["review", "stars"]
    [b for b in at.button if b.label == "Predict the column"][0].click()
    at.run()
    assert not at.exception, at.exception
    assert pages_shown(at) == {"playground"}
    table = at.dataframe[0].value
    assert list(table["review"]) == ["Shares fell sharply on Wall Street.", "A warm, funny and beautifully acted film."]
    assert {"topic_label", "sentiment_label"} <= set(table.columns) and table["topic_label"].notna().all()


# -- uploads and errors -------------------------------------------------------------------------------------
def test_uploads_are_kept_once_per_content_under_the_runs_folder(tmp_path):
    first = save_upload(tmp_path, "my data (v2).csv", b"text,label\na,1\n")
    again = save_upload(tmp_path, "my data (v2).csv", b"text,label\na,1\n")
    other = save_upload(tmp_path, "my data (v2).csv", b"text,label\nb,0\n")
    assert first == again != other
    assert first.parent == other.parent == tmp_path / "uploads"
    assert first.name.endswith("-my_data__v2_.csv") and first.suffix == ".csv"
    assert first.read_bytes() == b"text,label\na,1\n" and other.read_bytes() == b"text,label\nb,0\n"
    assert len(list((tmp_path / "uploads").iterdir())) == 2
    assert save_upload(tmp_path, "../../etc/passwd", b"x").parent == tmp_path / "uploads", "no path escapes"


def _page_that_raises(exc: Exception) -> None:
    import streamlit as st

    from pages.common import guarded

    st.session_state["freezelab_router"] = True

    @guarded
    def page() -> None:
        st.title("A page")
        raise exc

    page()


@pytest.mark.parametrize(
    "exc",
    [
        CheckpointError("no checkpoint in runs/x/checkpoint: the run has not saved weights yet."),
        KeyError("tasks"),
        RuntimeError("CUDA out of memory"),
    ],
    ids=["ours", "key-error", "runtime-error"],
)
def test_a_page_shows_errors_by_the_one_rule(exc):
    at = AppTest.from_function(_page_that_raises, args=(exc,), default_timeout=30).run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [user_message(exc)]
    if isinstance(exc, CheckpointError):
        assert at.error[0].value == str(exc), "our own messages are shown as they are"
    else:
        assert type(exc).__name__ in at.error[0].value and "bug" in at.error[0].value


def test_state_icons_cover_every_run_state():
    from pages.common import STATE_ICONS, state_label

    assert set(STATE_ICONS) == set(RunState)
    assert state_label("completed") == "✅ completed"
    assert state_label("failed", damaged=True) == "⚠️ failed (damaged)"
