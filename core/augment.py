"""Offline text augmentation for a small training split: EDA edits and embedding-neighbour replacement.

Why: when one task has a few hundred examples, cheap label-preserving edits give the head more varied
inputs (Wei & Zou 2019, "EDA: Easy data augmentation techniques for boosting performance on text
classification tasks" report the largest gains on small sets). No thesaurus or download is needed: EDA's
synonym step is replaced by nearest neighbours in the backbone's own input word-embedding table.

Only ever augment a TRAINING split: ``augment_split`` takes bare lists, ``augment_train`` takes a TaskData
and leaves its validation and test splits untouched.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from core.errors import AugmentError

EDA_OPS = ("delete", "swap", "insert")
METHODS = ("eda", "embedding", "both")
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$")  # leading punctuation, word, trailing punctuation


def eda(text: str, rng: np.random.Generator, alpha: float = 0.1, ops: tuple[str, ...] = EDA_OPS) -> str:
    """One EDA edit (Wei & Zou 2019) picked from ``ops``; alpha is the share of words changed.

    delete: each word dropped with probability alpha (one word always survives);
    swap: n = max(1, round(alpha * len)) swaps of two random positions;
    insert: n times, a word of the sentence itself inserted at a random position (EDA inserts a synonym;
    without a thesaurus we reuse the sentence's own words, which keeps the vocabulary in-domain).
    """
    bad = [op for op in ops if op not in EDA_OPS]
    if bad or not ops:
        raise AugmentError(f"EDA ops {list(ops)} must be a non-empty subset of {list(EDA_OPS)}.")
    if not 0 <= alpha <= 1:
        raise AugmentError(f"augmentation alpha={alpha} must be in [0, 1], e.g. 0.1.")
    words = text.split()
    if len(words) < 2:
        return text
    op = ops[int(rng.integers(len(ops)))]
    n = max(1, round(alpha * len(words)))
    if op == "delete":
        kept = [w for w, drop in zip(words, rng.random(len(words)) < alpha) if not drop]
        words = kept or [words[int(rng.integers(len(words)))]]
    elif op == "swap":
        for _ in range(n):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
    else:
        for _ in range(n):
            word = words[int(rng.integers(len(words)))]
            words.insert(int(rng.integers(len(words) + 1)), word)
    return " ".join(words)


class EmbeddingNeighbours:
    """Nearest neighbours (cosine) of whole words in a backbone's input word-embedding table.

    Candidates are vocabulary entries that are ASCII letters only, at least ``min_length`` long, not special
    tokens, not "##" subword pieces and not stopwords (EDA also leaves those alone: swapping "the" for "and"
    breaks grammar, not meaning). Caveat: embedding neighbours include antonyms ("good" -> "bad"), which can
    flip a sentiment label; keep alpha small or prefer EDA for polarity tasks. Neighbours are computed per requested word (one row against the
    candidate matrix, never a vocab x vocab matrix) and cached; ties break by token id, so it is deterministic.
    """

    def __init__(self, tokenizer, embedding_weight: torch.Tensor, k: int = 5, min_length: int = 3) -> None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # slow import: only when neighbours are used

        self.k = k
        self.min_length = min_length
        self._stop = ENGLISH_STOP_WORDS
        self._vocab: dict[str, int] = dict(tokenizer.get_vocab())
        special = set(tokenizer.all_special_tokens)
        self._weight = embedding_weight.detach().to("cpu", torch.float32)
        ids = sorted(i for tok, i in self._vocab.items() if tok not in special and self._is_word(tok))
        self._cand_ids = np.asarray(ids, dtype=np.int64)
        self._cand_tokens = {i: tok for tok, i in self._vocab.items()}
        self._unit: torch.Tensor | None = None  # normalised candidate rows, built on first use
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_model(cls, model, tokenizer, **kwargs) -> EmbeddingNeighbours:
        """From a MultiTaskModel or a bare HF model (e.g. BertModel's embeddings.word_embeddings)."""
        backbone = getattr(model, "backbone", model)
        return cls(tokenizer, backbone.get_input_embeddings().weight, **kwargs)

    def _is_word(self, token: str) -> bool:
        return len(token) >= self.min_length and token.isascii() and token.isalpha() and token.lower() not in self._stop

    def neighbours(self, word: str) -> list[str]:
        """The k nearest candidate words to ``word`` (case-folded to the vocabulary), itself excluded."""
        key = word.lower() if word not in self._vocab else word
        if key in self._cache:
            return self._cache[key]
        result: list[str] = []
        if key in self._vocab and self._is_word(key):
            if self._unit is None:
                self._unit = torch.nn.functional.normalize(self._weight[torch.from_numpy(self._cand_ids)], dim=1)
            query = torch.nn.functional.normalize(self._weight[self._vocab[key]], dim=0)
            sims = (self._unit @ query).numpy().astype(np.float64)
            order = np.lexsort((self._cand_ids, -sims))  # by similarity, then token id
            for pos in order[: self.k + 1]:
                token = self._cand_tokens[int(self._cand_ids[pos])]
                if token.lower() != key.lower():
                    result.append(token)
            result = result[: self.k]
        self._cache[key] = result
        return result


def replace_with_neighbours(
    text: str, source: EmbeddingNeighbours, rng: np.random.Generator, alpha: float = 0.1
) -> str:
    """Replace max(1, round(alpha * words)) replaceable words by a random one of their k nearest neighbours,
    keeping surrounding punctuation and a leading capital. Text with no replaceable word comes back as is."""
    words = text.split()
    parts = [_WORD.match(w).groups() for w in words]
    options = [source.neighbours(core) if core else [] for _, core, _ in parts]
    replaceable = [i for i, opts in enumerate(options) if opts]
    if not replaceable:
        return text
    n = min(len(replaceable), max(1, round(alpha * len(words))))
    for i in sorted(rng.choice(replaceable, size=n, replace=False)):
        lead, core, tail = parts[i]
        new = options[i][int(rng.integers(len(options[i])))]
        words[i] = lead + (new.capitalize() if core[:1].isupper() else new) + tail
    return " ".join(words)


def augment_split(
    texts: list[str],
    labels: list[int],
    copies_per_example: int,
    seed: int,
    method: str = "eda",
    neighbour_source: EmbeddingNeighbours | None = None,
    alpha: float = 0.1,
) -> tuple[list[str], list[int]]:
    """The originals, then ``copies_per_example`` augmented copies of each example (same label), in order
    example 0 copy 0..c-1, example 1 copy 0..c-1, ...; n * (1 + copies) items in all.

    Example i draws from default_rng([seed, i]), so the output depends only on (seed, texts) and a copy of
    one example does not change when others are added. "both" picks EDA or neighbour replacement per copy.
    """
    if method not in METHODS:
        raise AugmentError(f"augmentation method {method!r} is unknown: choose one of {', '.join(METHODS)}.")
    if method != "eda" and neighbour_source is None:
        raise AugmentError(f"augmentation method {method!r} needs a neighbour_source (EmbeddingNeighbours.from_model).")
    if copies_per_example < 0:
        raise AugmentError(f"copies_per_example={copies_per_example} must be >= 0.")
    if len(texts) != len(labels):
        raise AugmentError(f"{len(texts)} texts but {len(labels)} labels: they must be aligned.")
    out_texts, out_labels = list(texts), list(labels)
    for i, (text, label) in enumerate(zip(texts, labels)):
        rng = np.random.default_rng([seed, i])
        for _ in range(copies_per_example):
            use = method if method != "both" else ("eda", "embedding")[int(rng.integers(2))]
            new = eda(text, rng, alpha) if use == "eda" else replace_with_neighbours(text, neighbour_source, rng, alpha)
            out_texts.append(new)
            out_labels.append(label)
    return out_texts, out_labels


def augment_train(task_data, copies_per_example: int, seed: int, **kwargs):
    """A copy of a ``core.data.TaskData`` whose train split is augmented; validation and test are the same objects."""
    from core.data import Split

    texts, labels = augment_split(task_data.train.texts, task_data.train.labels, copies_per_example, seed, **kwargs)
    return dataclasses.replace(task_data, train=Split(texts, labels))
