"""core.data on the real packaged corpora and on real files written to tmp_path (no mocks)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from core.data import (
    BUILTIN_DATASETS,
    DataError,
    Split,
    TaskData,
    _bbc_rows,
    class_counts,
    load_task_data,
    preview_file,
    read_table,
    resolve_dataset_kind,
)

BBC_NAMES = ["business", "entertainment", "politics", "sports", "tech"]


def splits(data: TaskData) -> dict[str, Split]:
    return {"train": data.train, "validation": data.validation, "test": data.test}


def shares(split: Split, n_classes: int) -> list[float]:
    counts = Counter(split.labels)
    return [counts[c] / len(split) for c in range(n_classes)]


def write_rows(path: Path, n: int = 40, **columns) -> Path:
    """A real file with ``n`` rows: one text column and label columns, in the format its suffix names."""
    df = pd.DataFrame({name: [make(i) for i in range(n)] for name, make in columns.items()})
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


def review(i: int) -> str:
    return f"  review number {i} says the film was {'great' if i % 2 else 'dull'}  "


# -- built-ins --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bbc() -> TaskData:
    return load_task_data("topic", "bbc_topics")


def test_builtins_are_listed_and_resolve():
    assert set(BUILTIN_DATASETS) == {"bbc_topics", "rt_sentiment", "imdb_sentiment"}
    assert all(resolve_dataset_kind(name) == "builtin" for name in BUILTIN_DATASETS)


def test_bbc_has_five_named_topics_and_about_forty_thousand_sentences(bbc):
    assert bbc.label_names == BBC_NAMES
    total = sum(len(s) for s in splits(bbc).values())
    assert 35_000 < total < 45_000
    assert len({r.article for r in _bbc_rows()}) > 2_000
    for split in splits(bbc).values():
        assert set(split.labels) == set(range(5))
        assert all(len(t.split()) >= 4 and t == t.strip() for t in split.texts)
    everything = dict(
        zip(
            bbc.train.texts + bbc.test.texts + bbc.validation.texts,
            bbc.train.labels + bbc.test.labels + bbc.validation.labels,
        )
    )
    assert everything["Ad sales boost Time Warner profit"] == BBC_NAMES.index("business")  # business/001 headline


def test_bbc_latin1_file_is_decoded(bbc):
    """sports/199.txt holds a bare Latin-1 pound sign; it must read as a pound sign, not be lost."""
    pounds = [r.text for r in _bbc_rows() if "\u00a315.8m" in r.text and r.topic == BBC_NAMES.index("sports")]
    assert pounds and not any("\ufffd" in r.text for r in _bbc_rows())


def test_bbc_splits_never_share_an_article_or_a_sentence(bbc):
    article_of = {r.text: r.article for r in _bbc_rows()}
    articles = {name: {article_of[t] for t in s.texts} for name, s in splits(bbc).items()}
    texts = {name: set(s.texts) for name, s in splits(bbc).items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not articles[a] & articles[b], f"{a} and {b} share articles"
        assert not texts[a] & texts[b], f"{a} and {b} share sentences"
    # whole articles: every sentence of an article is in the one split that holds the article
    assert sum(len(s) for s in splits(bbc).values()) == len(_bbc_rows())


def test_bbc_split_is_stratified_by_topic(bbc):
    """Stories (articles sharing sentences) are stratified by topic: each topic gives ~10% of its stories to test."""
    story_of = {r.text: (r.story, r.topic) for r in _bbc_rows()}
    all_stories = Counter(topic for _, topic in set(story_of.values()))
    test_stories = Counter(topic for _, topic in {story_of[t] for t in bbc.test.texts})
    for topic, n in all_stories.items():
        assert abs(test_stories[topic] - n / 10) <= 1.5, (topic, test_stories[topic], n)
    train, test = shares(bbc.train, 5), shares(bbc.test, 5)
    assert all(abs(a - b) < 0.04 for a, b in zip(train, test)), (train, test)
    assert 0.07 < len(bbc.test) / len(_bbc_rows()) < 0.13


def test_rt_sentiment_is_balanced_and_stratified():
    data = load_task_data("sentiment", "rt_sentiment")
    assert data.label_names == ["negative", "positive"]
    assert sum(len(s) for s in splits(data).values()) == 8_530
    assert (len(data.validation), len(data.test)) == (853, 853)
    for split in splits(data).values():
        counts = class_counts(split, data.label_names)
        assert abs(counts["negative"] - counts["positive"]) <= 1
    assert not set(data.train.texts) & set(data.test.texts)


def test_imdb_has_no_html_line_breaks():
    data = load_task_data("sentiment", "imdb_sentiment", max_train_examples=500)
    assert data.label_names == ["negative", "positive"]
    assert len(data.validation) == len(data.test) == 2_500
    assert not any("<br" in t for s in splits(data).values() for t in s.texts)


def test_same_arguments_give_identical_data_and_seed_changes_it(bbc):
    again = load_task_data("topic", "bbc_topics")
    assert again == bbc and again.train is not bbc.train  # cached corpus, fresh objects
    again.train.texts.append("mutated")
    assert load_task_data("topic", "bbc_topics") == bbc
    other = load_task_data("topic", "bbc_topics", split_seed=1)
    assert set(other.test.texts) != set(bbc.test.texts)


def test_max_examples_cap_splits_keep_every_class_and_leave_test_alone(bbc):
    small = load_task_data("topic", "bbc_topics", max_train_examples=32, max_eval_examples=20)
    assert len(small.train) == 32 and set(small.train.labels) == set(range(5))
    assert len(small.validation) == len(small.test) == 20
    assert set(small.test.texts) <= set(bbc.test.texts)
    assert load_task_data("topic", "bbc_topics", max_train_examples=32).test == bbc.test
    summary = json.loads(json.dumps(small.summary()))
    assert summary["train"] == {"n": 32, "classes": class_counts(small.train, BBC_NAMES)}


def test_subsample_keeps_a_rare_class(tmp_path):
    """4% 'rare' rows: a plain stratified pick of 10 training examples rounds 'rare' down to zero."""
    path = write_rows(
        tmp_path / "rare.csv",
        300,
        text=lambda i: f"sentence {i} about things",
        label=lambda i: "rare" if i % 25 == 0 else "common",
    )
    data = load_task_data("t", str(path), max_train_examples=10, max_eval_examples=3)
    assert len(data.train) == 10 and set(data.train.labels) == {0, 1}
    assert set(data.validation.labels) == set(data.test.labels) == {0, 1}


# -- user files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_user_file_with_custom_columns(tmp_path, suffix):
    path = write_rows(tmp_path / f"reviews{suffix}", 60, sentence=review, mood=lambda i: "pos" if i % 2 else "neg")
    assert resolve_dataset_kind(str(path)) == "file"
    data = load_task_data("s", str(path), text_column="sentence", label_column="mood")
    assert data.label_names == ["neg", "pos"]
    assert [len(s) for s in splits(data).values()] == [48, 6, 6]
    assert all(
        t == t.strip() and ("great" in t) == (data.label_names[y] == "pos")
        for s in splits(data).values()
        for t, y in zip(s.texts, s.labels)
    )


def test_integer_labels_sort_numerically_and_bad_rows_are_dropped(tmp_path):
    path = tmp_path / "ints.jsonl"
    rows = [{"text": f"example text number {i}", "label": [2, 10, 1][i % 3]} for i in range(30)]
    rows += [{"text": "   ", "label": 1}, {"text": None, "label": 2}, {"text": "no label here", "label": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    data = load_task_data("t", str(path))
    assert data.label_names == ["1", "2", "10"]
    assert sum(len(s) for s in splits(data).values()) == 30
    assert "no label here" not in data.train.texts + data.validation.texts + data.test.texts


def test_one_file_two_label_columns_feed_two_tasks(tmp_path):
    path = write_rows(
        tmp_path / "multi.csv",
        50,
        text=review,
        topic=lambda i: ["film", "music"][i % 3 == 0],
        sentiment=lambda i: i % 2,
    )
    topic = load_task_data("topic", str(path), label_column="topic")
    sentiment = load_task_data("sentiment", str(path), label_column="sentiment")
    assert topic.label_names == ["film", "music"] and sentiment.label_names == ["0", "1"]
    for data, truth in ((topic, lambda i: ["film", "music"][i % 3 == 0]), (sentiment, lambda i: str(i % 2))):
        assert len(data.test) == 5
        for split in splits(data).values():
            for text, label in zip(split.texts, split.labels):
                assert data.label_names[label] == truth(int(text.split()[2]))


def _hub_serves(monkeypatch, hub_id: str, dataset) -> None:
    """The hub, offline: ``datasets.load_dataset(hub_id)`` returns ``dataset`` (hf: specs are hub ids only)."""
    import datasets

    def load_dataset(name, *args, **kwargs):
        assert name == hub_id, name
        return dataset

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_hf_dataset_concatenates_splits_and_resplits(monkeypatch):
    import datasets

    def part(n, start):
        return datasets.Dataset.from_dict(
            {"text": [review(start + i) for i in range(n)], "label": ["pos" if i % 2 else "neg" for i in range(n)]}
        )

    _hub_serves(monkeypatch, "org/reviews", datasets.DatasetDict(train=part(40, 0), test=part(20, 100)))
    spec = "hf:org/reviews"
    assert resolve_dataset_kind(spec) == "hub"
    data = load_task_data("s", spec)
    assert data.label_names == ["neg", "pos"]
    assert [len(s) for s in splits(data).values()] == [48, 6, 6]


def test_hf_class_label_ids_become_their_names(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [review(i) for i in range(30)], "label": [i % 2 for i in range(30)]})
    ds = ds.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    _hub_serves(monkeypatch, "cl", datasets.DatasetDict(train=ds))
    data = load_task_data("s", "hf:cl")
    assert data.label_names == ["neg", "pos"]
    assert all(("great" in t) == (y == 1) for t, y in zip(data.train.texts, data.train.labels))


def test_hf_unreachable_dataset_is_a_data_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # never touch the network from tests: the hub client must believe it is offline
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="hub could not be reached") as err:
        load_task_data("s", "hf:freezelab-test/no-such-dataset")
    assert "no-such-dataset" in str(err.value) and "local" in str(err.value)


def test_preview_file_is_json_ready(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,label,score\nhello there friend,a,1.5\nsecond row of text,b,\nthird,a,2\n", encoding="utf-8")
    preview = preview_file(path, n=2)
    assert preview["columns"] == ["text", "label", "score"] and preview["n_rows"] == 3
    assert preview["rows"] == [
        {"text": "hello there friend", "label": "a", "score": 1.5},
        {"text": "second row of text", "label": "b", "score": None},
    ]
    json.dumps(preview)


# -- bad data: every message names the file, the column and the fix -------------------------------
def raises(spec: str | Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_task_data("t", str(spec), **kwargs)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_unknown_spec_lists_builtins_and_hub_syntax(tmp_path):
    raises("bbc_topic", "not a built-in", "bbc_topics", "rt_sentiment", "not an existing", "hf:NAME")
    raises(tmp_path / "missing.csv", "missing.csv", "does not exist", "hf:NAME")
    raises(tmp_path, "A folder is not a dataset")  # hf: never means a local folder (issue 13)


def test_unsupported_extension_and_empty_files(tmp_path):
    (tmp_path / "notes.txt").write_text("text,label\nhi,a\n", encoding="utf-8")
    raises(tmp_path / "notes.txt", "notes.txt", ".txt", ".csv", ".jsonl", ".parquet")
    (tmp_path / "empty.csv").write_bytes(b"")
    raises(tmp_path / "empty.csv", "empty.csv", "empty")
    (tmp_path / "header.csv").write_text("text,label\n", encoding="utf-8")
    raises(tmp_path / "header.csv", "header.csv", "no rows")
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "gone.parquet")


def test_malformed_files_name_the_line_and_fix(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\ngood row,a\nfine too,b\ntoo, many, fields,a\n", encoding="utf-8")
    raises(tmp_path / "bad.csv", "bad.csv", "line 4", "quoted")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": broken\n', encoding="utf-8")
    raises(tmp_path / "bad.jsonl", "bad.jsonl", "JSON object per line")
    (tmp_path / "bad.parquet").write_text("this is not parquet", encoding="utf-8")
    raises(tmp_path / "bad.parquet", "bad.parquet", "PARQUET")


def test_missing_columns_list_what_exists_and_the_option(tmp_path):
    path = write_rows(tmp_path / "cols.csv", 30, Sentence=review, Label=lambda i: i % 2)
    raises(path, "cols.csv", "'text'", "['Sentence', 'Label']", "text_column")
    raises(path, "cols.csv", "'label'", "label_column", "did you mean 'Label'", text_column="Sentence")
    raises(path, "cols.csv", "'stars'", "label_column", text_column="Sentence", label_column="stars")
    raises(path, "cols.csv", "text_column and label_column", text_column="Label", label_column="Label")


def test_single_class_and_too_few_examples(tmp_path):
    one = write_rows(tmp_path / "one.csv", 30, text=review, label=lambda i: "x")
    raises(one, "one.csv", "'label'", "needs at least 2 classes; found only 'x'")
    few = write_rows(tmp_path / "few.csv", 6, text=review, label=lambda i: i % 2)
    raises(few, "few.csv", "only 6", "at least 10")
    blank = write_rows(tmp_path / "blank.csv", 20, text=lambda i: " ", label=lambda i: i % 2)
    raises(blank, "blank.csv", "'text'", "text_column")
    raises(
        write_rows(tmp_path / "ok.csv", 30, text=review, label=lambda i: i % 2),
        "validation_fraction",
        validation_fraction=0.6,
        test_fraction=0.5,
    )


def test_tiny_class_falls_back_to_unstratified_split(tmp_path):
    path = write_rows(tmp_path / "tiny.csv", 30, text=review, label=lambda i: "solo" if i == 0 else f"c{i % 2}")
    data = load_task_data("t", str(path), split_seed=3)
    assert data.label_names == ["c0", "c1", "solo"]
    assert sum(len(s) for s in splits(data).values()) == 30


def test_non_utf8_file_says_resave_as_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\n" + "caf\u00e9 au lait is nice,a\n".encode("latin-1") * 20)
    raises(path, "latin.csv", "UTF-8", "re-save")
