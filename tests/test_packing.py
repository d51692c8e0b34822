"""Packing on the real (2-layer) MiniLM and real sentences: same embeddings, loss and gradients as padded batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.backbones import load_backbone, load_tokenizer
from core.batching import collate, encode, eval_batches
from core.data import load_task_data
from core.model import pool
from core.packing import assign_rows, block_attention_mask, collate_packed, pack, packed_embeddings

BACKBONE = "minilm-l6:2"  # two layers: a leak through the mask would also reach the second layer's inputs
MAX_LENGTH = 64
ROW_LENGTH = 48  # below MAX_LENGTH on purpose: the long news sentences get rows of their own
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BACKBONE)


@pytest.fixture(scope="module")
def enc(tokenizer):
    """36 movie-review sentences (11 to 57 tokens) and 4 news texts truncated to 64 tokens, labels 0/1."""
    rt = load_task_data("sentiment", "rt_sentiment", max_train_examples=36).train
    bbc = load_task_data("topic", "bbc_topics", max_train_examples=8).train
    texts = rt.texts + bbc.texts[:4]
    labels = rt.labels + [label % 2 for label in bbc.labels[:4]]
    encoded = encode(tokenizer, texts, labels, MAX_LENGTH)
    lengths = encoded.lengths()
    assert lengths.max() > ROW_LENGTH and lengths.min() < ROW_LENGTH // 3, "the sample must vary in length"
    return encoded


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    """The same weights under both attention implementations; eval mode: dropout off, both forwards deterministic."""
    out = {}
    for attn in ("sdpa", "eager"):
        out[attn] = load_backbone(BACKBONE)
        out[attn].set_attn_implementation(attn)
        out[attn].eval()
    return out


def _padded_embeddings(backbone, enc, pad_id: int, pooling: str, batch_size: int = 16) -> torch.Tensor:
    """What training does today: length-sorted batches, each padded to its own longest sentence."""
    out = torch.empty(len(enc), backbone.config.hidden_size)
    for batch in eval_batches(enc.lengths(), batch_size):
        ids, mask, _, _ = collate(enc, batch, pad_id)
        out[batch] = pool(backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling)
    return out


def test_pack_keeps_every_sentence_whole_and_in_order(enc, tokenizer):
    ids = enc.input_ids
    packed = pack(ids, ROW_LENGTH, tokenizer.pad_token_id)
    n_rows, width = packed.shape
    assert width == max(ROW_LENGTH, max(len(s) for s in ids))
    assert packed.n_sentences == len(ids) and packed.n_tokens == sum(len(s) for s in ids)
    covered = torch.zeros(n_rows, width, dtype=torch.long)
    for i, sentence in enumerate(ids):
        r, s, n = int(packed.rows[i]), int(packed.starts[i]), int(packed.lengths[i])
        assert n == len(sentence)
        assert packed.input_ids[r, s : s + n].tolist() == sentence  # whole and contiguous, original index i
        assert packed.position_ids[r, s : s + n].tolist() == list(range(n))
        assert (packed.segment_ids[r, s : s + n] == i).all()
        assert (packed.segment_ids == i).sum() == n  # nowhere else
        covered[r, s : s + n] += 1
    assert covered.max() == 1  # no overlap
    pad = covered == 0
    assert (packed.segment_ids[pad] == -1).all() and (packed.input_ids[pad] == tokenizer.pad_token_id).all()
    assert (packed.position_ids[pad] == 0).all() and (packed.token_type_ids == 0).all()
    # Padding only after a row's last sentence; a row exceeds ROW_LENGTH only when it holds one long sentence.
    for r in range(n_rows):
        used = int(covered[r].sum())
        assert covered[r, :used].all() and not covered[r, used:].any()
        members = (packed.rows == r).nonzero().squeeze(1)
        assert used <= ROW_LENGTH or len(members) == 1
    assert ((packed.lengths > ROW_LENGTH).sum()) >= 1  # the sample exercises the long-sentence rule
    # First-fit decreasing: no two rows could be merged.
    fills = sorted(int(covered[r].sum()) for r in range(n_rows))
    assert fills[0] + fills[1] > ROW_LENGTH
    assert packed.fill > packed.n_tokens / (len(ids) * max(len(s) for s in ids))  # less padding than one padded batch


def test_mask_blocks_other_sentences_and_padding_without_empty_rows(enc, tokenizer):
    packed = pack(enc.input_ids[:10], 64, tokenizer.pad_token_id)
    mask = packed.attention_mask
    assert mask.shape == (packed.shape[0], 1, packed.shape[1], packed.shape[1]) and mask.dtype == torch.float32
    seg = packed.segment_ids
    allowed = mask[:, 0] == 0
    assert torch.equal(allowed, seg[:, :, None] == seg[:, None, :])
    assert (mask[:, 0][~allowed] == torch.finfo(torch.float32).min).all()
    assert allowed.any(-1).all()  # every query (pad included) keeps a key: softmax never sees an all-blocked row
    real_q = seg[:, :, None] >= 0
    assert not (allowed & real_q & (seg[:, None, :] < 0)).any()  # no real token attends to padding
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # the backbone's dtype, finfo(dtype).min exact
        other = pack(enc.input_ids[:10], 64, tokenizer.pad_token_id, mask_dtype=dtype).attention_mask
        assert other.dtype == dtype and torch.equal(other, block_attention_mask(seg, dtype))
        assert other.min() == torch.finfo(dtype).min


def test_assign_rows_first_fit_decreasing():
    assert assign_rows([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]
    assert assign_rows([10, 1, 1], 4) == [[0], [1, 2]]
    assert assign_rows([], 4) == []
    with pytest.raises(ValueError):
        assign_rows([1], 0)
    with pytest.raises(ValueError):
        pack([], 8, 0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_embeddings_equal_padded(enc, tokenizer, backbones, attn, pooling):
    backbone = backbones[attn]
    pad_id = tokenizer.pad_token_id
    with torch.no_grad():
        ref = _padded_embeddings(backbone, enc, pad_id, pooling)
        for row_length in (ROW_LENGTH, 128, 256):
            got = packed_embeddings(backbone, pack(enc.input_ids, row_length, pad_id), pooling)
            assert not got.isnan().any()
            assert torch.allclose(got, ref, atol=ATOL, rtol=0), (row_length, (got - ref).abs().max().item())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_padded(enc, tokenizer, backbones, attn):
    """Linear head + cross-entropy over the 40 sentences: loss and every parameter's gradient match.

    Tolerance: absolute 1e-5 elementwise for the loss and every gradient (measured: loss identical, gradients within
    ~1.5e-7 while the largest entry is ~0.2). Plus a relative check, ||packed - padded|| <= 1e-4 ||padded||, for every
    gradient whose norm exceeds 1e-6 (measured <= 7e-6). That leaves out only the attention key biases, whose true
    gradient is exactly 0 (a bias shared by all keys shifts a softmax row by a constant): float noise of ~1e-9 there.
    """
    backbone = backbones[attn]
    torch.manual_seed(0)
    head = nn.Linear(backbone.config.hidden_size, 2)
    params = dict(backbone.named_parameters()) | {f"head.{k}": v for k, v in head.named_parameters()}
    pad_id = tokenizer.pad_token_id
    indices = list(range(len(enc)))

    def loss_and_grads(embed):
        for p in params.values():
            p.grad = None
        emb, labels = embed()
        loss = nn.functional.cross_entropy(head(emb), labels)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in params.items()}

    def padded():
        ids, mask, labels, _ = collate(enc, indices, pad_id)
        return pool(backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean"), labels

    def packed():
        batch, labels, n_tokens = collate_packed(enc, indices, 128, pad_id)
        assert n_tokens == int(enc.lengths().sum())
        return packed_embeddings(backbone, batch), labels

    ref_loss, ref_grads = loss_and_grads(padded)
    got_loss, got_grads = loss_and_grads(packed)
    assert torch.allclose(got_loss, ref_loss, atol=ATOL, rtol=0)
    assert len(ref_grads) == len(params) > 30
    for name, ref in ref_grads.items():
        got = got_grads[name]
        assert torch.allclose(got, ref, atol=ATOL, rtol=0), (name, (got - ref).abs().max().item())
        if ref.norm() > 1e-6:
            assert (got - ref).norm() <= 1e-4 * ref.norm(), (name, ((got - ref).norm() / ref.norm()).item())
        else:
            assert name.endswith("attention.self.key.bias"), name
    assert any(g.abs().max() > 1e-3 for g in ref_grads.values())  # the comparison is not between zeros
