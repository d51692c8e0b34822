"""Bad input, as users bring it: uploaded files, config and CLI values, Playground sentences, and Hypothesis
fuzzing over the whole config. Every case ends in a clear message (a FreezeLabError: what is wrong and
how to fix it) or a correct result; never a traceback, never a lost run or file.

The cases are counted in ``BAD_INPUTS`` (README's Reliability section quotes the count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.cli import main as cli_main
from core.config import ConfigError, RunConfig, TaskConfig
from core.data import DataError, DataWarning, load_task_data, preview_file, read_table, resolve_dataset_kind
from core.errors import FreezeLabError, InvalidRunId, PredictError
from core.store import RunStore, validate_run_id
from core.uploads import save_upload
from tests.conftest import tiny_config

BAD_INPUTS: list[str] = []  # every case below adds its name: the suite's count of bad inputs tried


def counted(kind: str, cases: list) -> list:
    for case in cases:
        values = case.values if hasattr(case, "values") else case  # a pytest.param
        BAD_INPUTS.append(f"{kind}: {values[0] if isinstance(values, tuple) else values}")
    return cases


def ids(cases: list) -> list[str]:
    return [(c.values if hasattr(c, "values") else c)[0] for c in cases]


def rows(n: int, label=lambda i: "pos" if i % 2 else "neg") -> str:
    return "text,label\n" + "".join(
        f"review {i} of a film that was {'great' if i % 2 else 'dull'},{label(i)}\n" for i in range(n)
    )


# -- uploaded data ----------------------------------------------------------------------------------------------
FILE_CASES = counted(
    "file",
    [
        ("empty file", "a.csv", b"", "is empty"),
        ("header only", "a.csv", b"text,label\n", "is empty"),
        ("only blank lines", "a.csv", b"\n\n\n", "is empty"),
        ("Latin-1 text", "a.csv", b"text,label\n" + "caf\u00e9 cr\u00e8me,a\n".encode("latin-1") * 20, "UTF-8"),
        ("UTF-16 text", "a.csv", rows(20).encode("utf-16"), "UTF-8"),
        ("binary renamed .csv", "a.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, "UTF-8"),
        ("gzip renamed .csv", "a.csv", b"\x1f\x8b\x08\x00" + bytes(range(200)), "UTF-8"),
        ("binary renamed .jsonl", "a.jsonl", bytes(range(256)) * 4, "a.jsonl"),
        ("text renamed .parquet", "a.parquet", rows(20).encode(), "Parquet"),
        ("unsupported .xlsx", "a.xlsx", b"PK\x03\x04 not really", "unsupported type"),
        ("no extension", "data", b"text,label\nx,y\n", "unsupported type"),
        ("ragged csv", "a.csv", b'text,label\n"unterminated quote,a\nb,c,d,e\n' * 3, "a.csv"),
        ("broken json line", "a.jsonl", b'{"text": "ok", "label": "a"}\n{"text": broken\n', "a.jsonl"),
        ("json scalar lines", "a.jsonl", b"1\n2\n3\n", "a.jsonl"),
    ],
)


@pytest.mark.parametrize(("case", "name", "content", "says"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_unreadable_files_get_a_message(tmp_path, case, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(says)) as err:
        load_task_data("t", str(path))
    assert path.name in str(err.value) or "file" in str(err.value)
    assert path.read_bytes() == content, "the user's file is never changed"


COLUMN_CASES = counted(
    "columns",
    [
        ("missing text column", "sentence,label\n" + "hello there,a\n" * 20, {}, "no column 'text'"),
        ("misnamed column (case)", "Text,label\n" + "hello there,a\n" * 20, {}, "did you mean 'Text'"),
        ("one column", "text\n" + "hello there\n" * 20, {}, "no column 'label'"),
        ("text and label the same column", rows(30), {"label_column": "text"}, "both 'text'"),
        ("one class only", rows(30, label=lambda i: "pos"), {}, "at least 2 classes"),
        ("every label empty", "text,label\n" + "hello there,\n" * 20, {}, "no row has both"),
        ("every text empty", "text,label\n" + '"   ",a\n' * 20, {}, "no row has both"),
    ],
)


@pytest.mark.parametrize(("case", "content", "options", "says"), COLUMN_CASES, ids=[c[0] for c in COLUMN_CASES])
def test_files_with_wrong_columns_or_labels_get_a_message(tmp_path, case, content, options, says):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(says)):
        load_task_data("t", str(path), **options)


def test_labels_mixing_numbers_and_words_are_read_as_names(tmp_path):
    counted("labels", ["numbers in some rows, words in others"])
    path = tmp_path / "mixed.csv"
    path.write_text(rows(40, label=lambda i: ["1", "positive", "2", "negative"][i % 4]), encoding="utf-8")
    data = load_task_data("t", str(path))
    assert data.label_names == ["1", "2", "negative", "positive"]


def test_a_utf8_file_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    counted("file", ["UTF-8 with BOM (Excel 'CSV UTF-8')"])
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + rows(30).encode())
    assert list(read_table(path).columns) == ["text", "label"]


def test_latin1_error_names_the_true_byte_offset_and_line(tmp_path):
    """pandas decodes in chunks and reports the offset inside the chunk: the message must give the file's."""
    counted("file", ["Latin-1 byte deep in a large file"])
    head = rows(20_000).encode()  # about 900 kB of clean UTF-8 before the bad byte
    path = tmp_path / "late.csv"
    path.write_bytes(head + "caf\u00e9 noir,a\n".encode("latin-1"))
    offset = len(head) + 3
    with pytest.raises(DataError) as err:
        read_table(path)
    assert f"byte {offset:,}" in str(err.value) or f"byte offset {offset}" in str(err.value)
    assert "line 20,002" in str(err.value) and "Latin-1" in str(err.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    counted("file", ["over the size limit"])
    import core.data

    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:  # sparse: the size without the disk
        fh.truncate(core.data.MAX_FILE_BYTES + 1)
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("a file over the limit must not be parsed"))
    with pytest.raises(DataError, match="is larger than"):
        read_table(path)


def test_a_million_rows_are_sampled_with_a_message(tmp_path):
    counted("file", ["a million rows"])
    import core.data

    path = tmp_path / "million.csv"
    n = 1_000_000
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("text,label\n")
        fh.writelines(f"row {i},{'ab'[i % 2]}\n" for i in range(n))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_table(path)
    assert len(df) == core.data.MAX_ROWS < n
    assert df.attrs["note"] and f"{n:,}" in df.attrs["note"] and f"{core.data.MAX_ROWS:,}" in df.attrs["note"]
    assert any(df.attrs["note"] == str(w.message) for w in caught)
    with pytest.warns(DataWarning):
        assert df.equals(read_table(path)), "the sample is the same every time: runs stay reproducible"
        assert preview_file(path)["note"] == df.attrs["note"]


HUB_CASES = counted(
    "hub",
    [
        ("a local folder", "{folder}", "hub id"),
        ("a relative path", "./{name}", "hub id"),
        ("a parent path", "../{name}", "hub id"),
        ("an absolute path", "/etc", "hub id"),
        ("a home path", "~/data", "hub id"),
        ("a local file", "{file}", "hub id"),
        ("spaces", "my data set", "hub id"),
        ("empty", "", "hf:NAME"),
    ],
)


@pytest.mark.parametrize(("case", "spec", "says"), HUB_CASES, ids=[c[0] for c in HUB_CASES])
def test_hf_means_a_hub_id_never_a_local_path(tmp_path, monkeypatch, case, spec, says):
    import datasets

    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "train.csv").write_text(rows(40), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("nothing local may be loaded"))
    spec = "hf:" + spec.format(folder=folder, name=folder.name, file=folder / "train.csv")
    with pytest.raises(DataError, match=re.escape(says)) as err:
        load_task_data("t", spec)
    assert "review" not in str(err.value) and "label" not in str(err.value), "nothing of the folder's content leaks"


def test_a_hub_id_that_names_a_local_folder_is_not_read(tmp_path, monkeypatch):
    """`hf:org/name` is a hub id even when ./org/name exists: the datasets library would read that folder."""
    counted("hub", ["a hub id shadowed by a local folder"])
    import datasets

    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "train.csv").write_text(rows(40), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the local folder was read"))
    with pytest.raises(DataError, match="local folder"):
        load_task_data("t", "hf:org/name")
    assert resolve_dataset_kind("hf:imdb") == "hub" and resolve_dataset_kind("hf:stanfordnlp/imdb") == "hub"


# -- uploads --------------------------------------------------------------------------------------------------
def test_an_upload_over_the_limit_is_refused_and_an_interrupted_one_is_not_reused(tmp_path, monkeypatch):
    counted("upload", ["over the size limit", "interrupted write"])
    import core.uploads

    monkeypatch.setattr(core.uploads, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(DataError, match="larger than"):
        save_upload(tmp_path, "big.csv", b"x" * 101)
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())
    monkeypatch.setattr(core.uploads, "MAX_UPLOAD_BYTES", 10_000)
    data = rows(20).encode()
    path = core.uploads.upload_path(tmp_path, "r.csv", data)
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:10])  # a copy cut short by a crash
    assert save_upload(tmp_path, "r.csv", data).read_bytes() == data


# -- config and CLI values --------------------------------------------------------------------------------------
CONFIG_CASES = counted(
    "config",
    [
        ("negative seed", {"seed": -1}, "seed"),
        ("seed as text", {"seed": "abc"}, "seed"),
        ("seed too large for numpy", {"seed": 2**40}, "seed"),
        ("name as a number", {"name": 123}, "name"),
        ("backbone as a number", {"backbone": 5}, "backbone"),
        ("empty backbone", {"backbone": ""}, "backbone"),
        ("freeze_layers as text", {"strategy": "freeze_lower", "freeze_layers": "2"}, "freeze_layers"),
        ("negative freeze_layers", {"freeze_layers": -1}, "freeze_layers"),
        ("tags as a number", {"tags": 5}, "tags"),
        ("tags holding numbers", {"tags": [1, 2]}, "tags"),
        ("negative learning rate", {"head_learning_rate": -0.1}, "head_learning_rate"),
        ("absurd learning rate", {"backbone_learning_rate": 1e3}, "backbone_learning_rate"),
        ("NaN learning rate", {"head_learning_rate": math.nan}, "head_learning_rate"),
        ("infinite epochs", {"epochs": math.inf}, "epochs"),
        ("zero batch size", {"batch_size": 0}, "batch_size"),
        ("fractional batch size", {"batch_size": 8.5}, "batch_size"),
        ("boolean batch size", {"batch_size": True}, "batch_size"),
        ("max_length far too large", {"max_length": 100_000}, "max_length"),
        ("unknown strategy", {"strategy": "freeze_everything"}, "strategy"),
        ("strategy as a list", {"strategy": ["bitfit"]}, "strategy"),
        ("unknown device", {"device": "tpu"}, "device"),
        ("tasks not a list", {"tasks": "bbc_topics"}, "tasks"),
        ("a task that is a number", {"tasks": [5]}, "tasks[0]"),
        ("a task without a dataset", {"tasks": [{"name": "topic"}]}, "tasks[0]"),
        ("a task with an unknown key", {"tasks": [{"name": "t", "dataset": "bbc_topics", "colour": 1}]}, "tasks[0]"),
        ("empty text column", {"tasks": [{"name": "t", "dataset": "bbc_topics", "text_column": ""}]}, "text_column"),
        ("task name with a space", {"tasks": [{"name": "my task", "dataset": "bbc_topics"}]}, "tasks[0].name"),
        ("lora_targets as text", {"lora_targets": "query"}, "lora_targets"),
        ("an unknown key", {"learning_rate": 0.1}, "learning_rate"),
    ],
)


@pytest.mark.parametrize(("case", "change", "field"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_invalid_config_values_name_the_field(case, change, field):
    data = {**tiny_config().to_dict(), **change}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data).validate()
    assert field in str(err.value)


BACKBONE_CASES = counted(
    "backbone limits",
    [
        ("max_length beyond the position embeddings", {"max_length": 1024}, "max_length=1024", "512"),
        (
            "more frozen layers than the backbone has",
            {"strategy": "freeze_lower", "freeze_layers": 3},
            "freeze_layers=3",
            "1 layer",
        ),
    ],
)


@pytest.mark.parametrize(("case", "change", "field", "limit"), BACKBONE_CASES, ids=[c[0] for c in BACKBONE_CASES])
def test_values_beyond_the_backbone_are_refused_at_submit(store, case, change, field, limit):
    from core import jobs

    with pytest.raises(ConfigError) as err:
        jobs.submit(store, tiny_config(**change), start_runner=False)
    assert field in str(err.value) and limit in str(err.value)
    assert store.run_ids() == [], "nothing was queued"


def test_max_length_within_the_backbone_is_accepted(store):
    from core import jobs

    run_id = jobs.submit(store, tiny_config(max_length=512), start_runner=False)
    assert store.read_config(run_id).max_length == 512


def cli(*args: str, runs, capsys) -> tuple[int, str, str]:
    """The CLI in this process: an exception that escapes main() is a traceback the user would see."""
    code = cli_main(["--runs-dir", str(runs), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


TINY = ("--backbone", "minilm-l6:1", "--max-train-examples", "32", "--max-eval-examples", "20", "--device", "cpu")
CLI_CASES = counted(
    "cli",
    [
        ("--seed -1", ["train", "--seed", "-1", *TINY], "seed"),
        ("--set name=123", ["submit", "--set", "name=123", *TINY], "name"),
        ("--set backbone=5", ["submit", "--set", "backbone=5"], "backbone"),
        ('--set seed="abc"', ["submit", "--set", 'seed="abc"', *TINY], "seed"),
        (
            '--set freeze_layers="2"',
            ["submit", "--strategy", "freeze_lower", "--set", 'freeze_layers="2"', *TINY],
            "freeze_layers",
        ),
        ("--set tags=5", ["submit", "--set", "tags=5", *TINY], "tags"),
        ("--set epochs=abc", ["submit", "--set", "epochs=abc", *TINY], "epochs"),
        ("--concurrency 0", ["submit", "--concurrency", "0", *TINY], "concurrency"),
        ("--concurrency -3", ["submit", "--concurrency", "-3", *TINY], "concurrency"),
        ("--max-length 1024", ["submit", "--max-length", "1024", *TINY], "max_length"),
        ("--batch-size 0", ["submit", "--batch-size", "0", *TINY], "batch_size"),
        ("--head-lr -1", ["submit", "--head-lr", "-1", *TINY], "head_learning_rate"),
        ("--freeze-layers 9", ["submit", "--strategy", "freeze_lower", "--freeze-layers", "9", *TINY], "freeze_layers"),
        ("unknown backbone", ["submit", "--backbone", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
        ("--task-a missing file", ["submit", "--task-a", "nowhere.csv", *TINY], "nowhere.csv"),
        ("--config missing file", ["submit", "--config", "nowhere.json"], "nowhere.json"),
        ("--set without =", ["submit", "--set", "epochs"], "KEY=VALUE"),
        ("--seeds with words", ["sweep", "--seeds", "0,one", *TINY], "--seeds"),
        ("--strategies unknown", ["sweep", "--strategies", "bitfit,nope", *TINY], "nope"),
        ("--init-from a path", ["submit", "--init-from", "../etc", *TINY], "init_from"),
        ("show run id with a newline", ["show", "run\n"], "not valid"),
        ("delete an unknown run", ["delete", "no-such-run"], "not found"),
        ("restore an unknown run", ["restore", "no-such-run"], "not in the trash"),
    ],
)


@pytest.mark.parametrize(("case", "argv", "says"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_cli_values_get_a_message_and_queue_nothing(tmp_path, capsys, monkeypatch, case, argv, says):
    import core.jobs

    monkeypatch.setattr(core.jobs, "ensure_runner", lambda *a, **k: False)  # nothing may start in the background
    runs = tmp_path / "runs"
    code, out, err = cli(*argv, runs=runs, capsys=capsys)
    assert code == 2 and says in err, (code, out, err)
    assert RunStore(runs).run_ids() == [], "a refused command leaves no run behind"


def test_config_files_with_unknown_or_missing_keys(tmp_path, capsys, monkeypatch):
    counted("config file", ["unknown key", "missing keys (defaults)", "not JSON", "a JSON list"])
    import core.jobs

    monkeypatch.setattr(core.jobs, "ensure_runner", lambda *a, **k: False)
    runs = tmp_path / "runs"
    for content, says in (
        ('{"learning_rate": 1}', "learning_rate"),
        ("{not json", "not valid JSON"),
        ("[1]", "object"),
    ):
        (tmp_path / "c.json").write_text(content)
        code, _, err = cli("submit", "--config", str(tmp_path / "c.json"), runs=runs, capsys=capsys)
        assert code == 2 and says in err, err
    (tmp_path / "c.json").write_text('{"seed": 3}')  # every other key takes its default
    code, out, err = cli("submit", "--config", str(tmp_path / "c.json"), *TINY, runs=runs, capsys=capsys)
    assert code == 0, err
    assert RunStore(runs).read_config(out.strip()).seed == 3


RUN_ID_CASES = counted("run id", ["run\n", "run\r", " run", "run/x", "..", "a" * 200, "\x00", "ru n", "-run", "."])


@pytest.mark.parametrize("run_id", RUN_ID_CASES)
def test_odd_run_ids_are_refused(run_id):
    with pytest.raises(InvalidRunId):
        validate_run_id(run_id)


# -- Playground sentences ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[RunStore, str]:
    from core.train import train_run

    store = RunStore(tmp_path_factory.mktemp("playground") / "runs")
    run_id = store.create_run(tiny_config(max_test_examples=20))
    train_run(store, run_id)
    return store, run_id


@pytest.fixture(scope="module")
def predictor(trained):
    from core.predict import Predictor

    return Predictor.from_run(*trained, device="cpu")


SENTENCES = counted(
    "sentence",
    [
        ("100,000 characters", ["word " * 20_000]),
        ("emoji", ["🔥🔥 best film ever 😂👍🏽"]),
        ("right-to-left Arabic", ["هذا الفيلم رائع جدا"]),
        ("right-to-left Hebrew with an override", ["\u202eסרט נהדר\u202c"]),
        ("control characters", ["\x00\x07\x1b[31mred\x1b[0m\x7f"]),
        ("zero-width characters only", ["\u200b\u200c\u200d\ufeff"]),
        ("unpaired surrogate", ["bad \ud800 text"]),  # like `python -m core predict RUN $'\\xff'` (surrogateescape)
        ("surrogate-escaped byte", ["caf\udce9 au lait"]),  # what argv holds for a Latin-1 byte
        ("one character", ["a"]),
        ("a newline inside", ["first line\nsecond line"]),
        ("thousands of lines", [f"sentence number {i} about markets and films" for i in range(3000)]),
        ("combining marks", ["Z\u0351\u0364\u0359a\u0308\u0308\u0308l\u0301\u0301go"]),
        ("HTML and script", ["<script>alert('x')</script><b>bold</b>"]),
    ],
)


@pytest.mark.parametrize(("case", "texts"), SENTENCES, ids=ids(SENTENCES))
def test_odd_sentences_predict_every_task(predictor, case, texts):
    results = predictor.predict(texts)
    assert len(results) == len(texts)
    for r in results[:50]:
        r["text"].encode("utf-8")  # shown on a page, written to JSON: a lone surrogate is replaced (U+FFFD)
        for task, names in predictor.label_names.items():
            probs = r["tasks"][task]["probabilities"]
            assert list(probs) == names and abs(sum(probs.values()) - 1) < 1e-4
            assert all(math.isfinite(p) for p in probs.values())


EMPTY_SENTENCES = counted(
    "sentence",
    [
        ("empty", [""]),
        ("spaces and tabs", [" \t \n"]),
        ("no text at all", [None]),
        ("none given", []),
    ],
)


@pytest.mark.parametrize(("case", "texts"), EMPTY_SENTENCES, ids=ids(EMPTY_SENTENCES))
def test_empty_sentences_get_a_message(predictor, case, texts):
    with pytest.raises(PredictError, match="type a sentence|no text"):
        predictor.predict(texts)


def test_cli_predict_reads_non_utf8_arguments_and_refuses_empty_ones(trained, capsys):
    """argv holds a byte that is not UTF-8 as a lone surrogate (surrogateescape): predicted, shown as U+FFFD."""
    counted("sentence", ["CLI: a Latin-1 byte in an argument", "CLI: an empty argument"])
    store, run_id = trained
    code, out, err = cli("predict", run_id, "caf\udce9 au lait", "--json", runs=store.root, capsys=capsys)
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["text"] == "caf\ufffd au lait" and set(result["tasks"]) == {"topic", "sentiment"}
    code, out, err = cli("predict", run_id, "  ", runs=store.root, capsys=capsys)
    assert code == 2 and "type a sentence" in err and "Traceback" not in err, err


# -- Hypothesis: every invalid config names its field ------------------------------------------------------------
def _kinds(annotation: str) -> set[str]:
    """'int | None' -> {'int', 'None'}; containers by their outer type."""
    return {part.strip().split("[")[0] for part in annotation.split("|")}


def _valid_for(kinds: set[str], value) -> bool:
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds
    return type(value).__name__ in kinds


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
RUN_FIELDS = [f for f in dataclasses.fields(RunConfig)]
TASK_FIELDS = [f for f in dataclasses.fields(TaskConfig)]


@st.composite
def wrong_type(draw):
    """(where, field name, value): a value whose type the field does not take."""
    on_task = draw(st.booleans())
    field = draw(st.sampled_from(TASK_FIELDS if on_task else RUN_FIELDS))
    kinds = _kinds(field.type)
    value = draw(JSON_VALUES.filter(lambda v: not _valid_for(kinds, v)))
    return ("task" if on_task else "run"), field.name, value


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(wrong_type())
def test_fuzz_a_value_of_the_wrong_type_names_its_field(case):
    where, name, value = case
    data = tiny_config().to_dict()
    if where == "task":
        data["tasks"][0][name] = value
    else:
        data[name] = value
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data).validate()
    assert name in str(err.value), (name, value, str(err.value))


NUMERIC = [f.name for f in RUN_FIELDS if _kinds(f.type) & {"int", "float"} and "bool" not in _kinds(f.type)]


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.sampled_from(NUMERIC),
    st.one_of(
        st.floats(max_value=-1e-9),
        st.floats(min_value=1e13),
        st.just(math.nan),
        st.integers(max_value=-1),
        st.integers(min_value=10**13),
    ),
)
def test_fuzz_a_number_out_of_range_names_its_field(name, value):
    data = {**tiny_config().to_dict(), name: value}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(data).validate()
    assert name in str(err.value), (name, value, str(err.value))


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from([f.name for f in RUN_FIELDS]), st.text(max_size=8)),
        st.one_of(JSON_VALUES, st.lists(st.dictionaries(st.sampled_from([f.name for f in TASK_FIELDS]), JSON_VALUES))),
        max_size=6,
    )
)
def test_fuzz_any_json_object_is_a_config_or_a_config_error(data):
    """Whatever a config file holds: a valid config, or a ConfigError; never another exception."""
    try:
        cfg = RunConfig.from_dict(data).validate()
    except ConfigError as exc:
        assert str(exc)
    else:
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_suite_tries_at_least_forty_bad_inputs():
    """The count README quotes. (Collected at import: every parametrized list is counted once.)"""
    assert len(BAD_INPUTS) >= 40, len(BAD_INPUTS)
    if os.environ.get("FREEZELAB_PRINT_COUNTS"):
        print(f"\nbad inputs: {len(BAD_INPUTS)} named cases plus Hypothesis fuzzing")


def test_every_bad_input_error_is_a_freezelab_error():
    assert all(issubclass(e, FreezeLabError) for e in (ConfigError, DataError, PredictError, InvalidRunId))


def test_a_thousand_classes_get_a_warning_before_the_run_is_queued(tmp_path, capsys, monkeypatch):
    counted("labels", ["1,000 classes in 1,200 rows"])
    import core.jobs

    monkeypatch.setattr(core.jobs, "ensure_runner", lambda *a, **k: False)
    path = tmp_path / "many.csv"
    path.write_text(rows(1200, label=lambda i: f"class{i % 1000}"), encoding="utf-8")
    code, out, err = cli("submit", "--task-a", str(path), "--tasks", "a", *TINY, runs=tmp_path / "runs", capsys=capsys)
    assert code == 0 and "warning: task topic" in err and "1,000 classes for 1,200 rows" in err, err
    assert RunStore(tmp_path / "runs").run_ids() == [out.strip()], "a warning, not a refusal"
    few = tmp_path / "few.csv"
    few.write_text(rows(200), encoding="utf-8")
    code, _, err = cli("submit", "--task-a", str(few), "--tasks", "a", *TINY, runs=tmp_path / "runs", capsys=capsys)
    assert code == 0 and "warning" not in err


def test_too_few_rows_recommend_only_what_the_user_can_set(tmp_path):
    counted("file", ["8 rows"])
    path = tmp_path / "eight.csv"
    path.write_text(rows(8), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_task_data("t", str(path))
    keys = {f.name for f in dataclasses.fields(RunConfig)} | {f.name for f in dataclasses.fields(TaskConfig)}
    named = set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", str(err.value)))
    assert "8" in str(err.value) and named <= keys, named - keys


def test_a_config_json_that_builds_no_model_is_a_backbone_error(tmp_path):
    """The Launch page's plan (core.strategies.plan) on a folder whose config.json reads but cannot build: a
    message naming the backbone and the file, not a raw ValueError from transformers."""
    import json

    from core.config import RunConfig
    from core.errors import BackboneError
    from core.strategies import plan

    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 10, "num_attention_heads": 3, "num_hidden_layers": 1})
    )
    with pytest.raises(BackboneError, match="config.json does not describe a model"):
        plan(RunConfig(backbone=str(folder), strategy="frozen_backbone"))
