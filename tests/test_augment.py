"""EDA edits, embedding-neighbour replacement on the real packaged tokenizer/backbone, and augment_split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from core.augment import AugmentError, EmbeddingNeighbours, augment_split, augment_train, eda, replace_with_neighbours
from core.data import Split, TaskData
from tests.conftest import TINY_BACKBONE

TEXTS = [
    "The film was surprisingly good and the actors were great.",
    "A dull, boring movie with a terrible script.",
    "Shares in the bank fell sharply after the report.",
    "The striker scored twice in the second half.",
    "Short.",
]
LABELS = [1, 0, 2, 3, 1]


@pytest.fixture(scope="module")
def neighbours() -> EmbeddingNeighbours:
    from core.backbones import load_backbone, load_tokenizer

    return EmbeddingNeighbours.from_model(load_backbone(TINY_BACKBONE), load_tokenizer(TINY_BACKBONE))


def test_eda_operations_do_what_they_say():
    text = "one two three four five six seven eight nine ten"
    words = text.split()
    for seed in range(20):
        swapped = eda(text, np.random.default_rng(seed), alpha=0.2, ops=("swap",)).split()
        assert Counter(swapped) == Counter(words) and swapped != words
        inserted = eda(text, np.random.default_rng(seed), alpha=0.2, ops=("insert",)).split()
        assert len(inserted) == 12 and set(inserted) == set(words)
        deleted = eda(text, np.random.default_rng(seed), alpha=0.3, ops=("delete",)).split()
        assert 1 <= len(deleted) <= 10 and deleted == [w for w in words if w in deleted]  # order kept
    assert eda("Short.", np.random.default_rng(0)) == "Short."
    assert eda(text, np.random.default_rng(4), 0.2) == eda(text, np.random.default_rng(4), 0.2)
    with pytest.raises(AugmentError):
        eda(text, np.random.default_rng(0), ops=("synonym",))


def test_augment_split_is_seeded_aligned_and_sized():
    texts, labels = augment_split(TEXTS, LABELS, copies_per_example=3, seed=11, method="eda", alpha=0.2)
    assert len(texts) == len(labels) == len(TEXTS) * 4
    assert texts[: len(TEXTS)] == TEXTS and labels[: len(TEXTS)] == LABELS
    for i, label in enumerate(LABELS):
        copies = range(len(TEXTS) + 3 * i, len(TEXTS) + 3 * i + 3)
        assert [labels[j] for j in copies] == [label] * 3
        # each copy is built from its own original: EDA only reuses that sentence's words
        assert all(set(texts[j].split()) <= set(TEXTS[i].split()) for j in copies)
    assert (texts, labels) == augment_split(TEXTS, LABELS, 3, seed=11, method="eda", alpha=0.2)
    assert texts != augment_split(TEXTS, LABELS, 3, seed=12, method="eda", alpha=0.2)[0]
    assert sum(t != TEXTS[(j - len(TEXTS)) // 3] for j, t in enumerate(texts[len(TEXTS) :], len(TEXTS))) >= 10
    assert augment_split(TEXTS, LABELS, 0, seed=1) == (TEXTS, LABELS)


def test_augment_split_rejects_bad_options():
    with pytest.raises(AugmentError, match="neighbour_source"):
        augment_split(TEXTS, LABELS, 1, seed=0, method="embedding")
    with pytest.raises(AugmentError, match="eda, embedding, both"):
        augment_split(TEXTS, LABELS, 1, seed=0, method="backtranslate")
    with pytest.raises(AugmentError, match="aligned"):
        augment_split(TEXTS, LABELS[:2], 1, seed=0)


def test_embedding_neighbours_are_real_words(neighbours):
    good = neighbours.neighbours("good")
    assert good and "good" not in good
    assert all(w.isascii() and w.isalpha() and len(w) >= 3 for w in good)
    assert "film" in neighbours.neighbours("movie")  # the pretrained table knows its synonyms
    assert neighbours.neighbours("Movie") == neighbours.neighbours("movie")
    for not_a_word in ("##ing", "[CLS]", "[PAD]", "a", "the", "xqzvw", "3"):
        assert neighbours.neighbours(not_a_word) == []
    assert not any(w.startswith("##") or w.startswith("[") for w in neighbours.neighbours("economy"))


def test_neighbour_replacement_keeps_form(neighbours):
    rng = np.random.default_rng(0)
    out = replace_with_neighbours("Terrible, boring movie!", neighbours, rng, alpha=1.0).split()
    assert len(out) == 3 and out[0][0].isupper() and out[0].endswith(",") and out[2].endswith("!")
    assert out[0][:-1].lower() in neighbours.neighbours("terrible")
    assert replace_with_neighbours("the and of", neighbours, rng) == "the and of"


@pytest.mark.parametrize("method", ["embedding", "both"])
def test_augment_split_with_neighbours_is_deterministic(neighbours, method):
    first = augment_split(TEXTS, LABELS, 2, seed=5, method=method, neighbour_source=neighbours)
    assert first == augment_split(TEXTS, LABELS, 2, seed=5, method=method, neighbour_source=neighbours)
    assert first[0] != augment_split(TEXTS, LABELS, 2, seed=6, method=method, neighbour_source=neighbours)[0]
    assert len(first[0]) == 15 and first[1] == LABELS + [y for y in LABELS for _ in range(2)]
    assert set(first[0][5:]) - set(TEXTS)  # something actually changed


def test_augment_train_touches_only_the_training_split():
    data = TaskData(
        "sentiment", "x", ["a", "b", "c", "d"], Split(TEXTS, LABELS), Split(TEXTS[:2], [1, 0]), Split([], [])
    )
    out = augment_train(data, copies_per_example=2, seed=0)
    assert len(out.train) == 15 and out.validation is data.validation and out.test is data.test
    assert len(data.train) == 5  # the input is not modified
