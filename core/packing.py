"""Sequence packing: several sentences per row, a block-diagonal attention mask, per-sentence pooling.

A padded batch is as wide as its longest sentence, so short sentences leave most of each row as padding and the
matrices stay small. Packing puts several tokenized sentences one after the other into rows of a fixed length L and
keeps them independent:

* attention mask: a 4D additive mask [R, 1, L, L], 0 where query and key belong to the same sentence and
  ``finfo(dtype).min`` elsewhere. Padding at the end of a row forms its own block (pad tokens attend to the row's pad
  tokens only), so no softmax row is all-blocked and nothing turns NaN, and no real token ever sees a pad token;
* position ids restart at 0 for every sentence, token type ids are 0 everywhere;
* pooling is per sentence: the states of a sentence's tokens summed (``index_add_``) and divided by its length.

The embeddings (and the loss and every gradient) equal those of the padded forward up to float rounding.

transformers 5.x (``masking_utils.create_bidirectional_mask``) returns a 4D mask untouched, whatever the attention
implementation: "eager" adds it to the scores, "sdpa" hands it to ``scaled_dot_product_attention`` as ``attn_mask``
(where a float mask is also added). So an additive float mask in the model's dtype works for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Packed",
    "assign_rows",
    "block_attention_mask",
    "collate_packed",
    "pack",
    "packed_embeddings",
    "packed_hidden_states",
    "pool_segments",
]


@dataclass
class Packed:
    """Sentences packed into rows. Per-sentence fields are in the order of the sentences given to :func:`pack`."""

    input_ids: torch.Tensor  # [R, L] long, pad_id after the last sentence of a row
    position_ids: torch.Tensor  # [R, L] long, 0.. within each sentence, 0 on padding
    token_type_ids: torch.Tensor  # [R, L] long, all 0
    attention_mask: torch.Tensor  # [R, 1, L, L] additive: 0 allowed, finfo(dtype).min blocked
    segment_ids: torch.Tensor  # [R, L] long: index of the sentence owning the token, -1 on padding
    rows: torch.Tensor  # [N] long: row of sentence i
    starts: torch.Tensor  # [N] long: first column of sentence i in its row
    lengths: torch.Tensor  # [N] long: token count of sentence i

    @property
    def n_sentences(self) -> int:
        return int(self.lengths.numel())

    @property
    def n_tokens(self) -> int:
        """Real (non-pad) tokens: what a tokens/s figure should count."""
        return int(self.lengths.sum())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def fill(self) -> float:
        """Fraction of the R x L slots holding real tokens."""
        return self.n_tokens / max(1, self.input_ids.numel())

    def to(self, device) -> Packed:
        return Packed(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


def assign_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing: sentence indices per row, each row's total length <= row_length.

    A sentence longer than row_length gets a row of its own. Rows come out in creation order, each row's sentences
    in the order they were placed (longest first). Deterministic: ties keep the input order.
    """
    if row_length < 1:
        raise ValueError(f"row_length must be >= 1, got {row_length}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        if n > row_length:
            rows.append([i])
            free.append(0)
            continue
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_length - n)
    return rows


def block_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[R, L] segment ids -> [R, 1, L, L] additive mask: 0 where query and key share a segment, finfo.min elsewhere.

    Padding (segment -1) shares a segment with the other padding of its row only, so every query row keeps at least
    one allowed key (no NaN) and real tokens never attend to padding.
    """
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segment_ids.device)
    return torch.where(same, torch.zeros((), dtype=dtype, device=segment_ids.device), blocked)


def pack(
    input_ids_list: list[list[int]], row_length: int, pad_id: int, mask_dtype: torch.dtype = torch.float32
) -> Packed:
    """Pack tokenized sentences (no padding, special tokens included) into rows of ``row_length`` tokens.

    Rows are ``max(row_length, longest sentence)`` wide, so a sentence longer than row_length (its own row) still fits
    whole; no sentence is ever split. ``mask_dtype`` should be the backbone's dtype.
    """
    if not input_ids_list:
        raise ValueError("pack() needs at least one sentence")
    lengths = [len(ids) for ids in input_ids_list]
    if min(lengths) < 1:
        raise ValueError("pack() got an empty sentence")
    layout = assign_rows(lengths, row_length)
    width = max(row_length, max(lengths))
    # Built in numpy (single-threaded, no per-op dispatch): cheap even when torch's threads are busy elsewhere.
    input_ids = np.full((len(layout), width), pad_id, dtype=np.int64)
    position_ids = np.zeros((len(layout), width), dtype=np.int64)
    segment_ids = np.full((len(layout), width), -1, dtype=np.int64)
    rows = np.empty(len(lengths), dtype=np.int64)
    starts = np.empty(len(lengths), dtype=np.int64)
    for r, members in enumerate(layout):
        col = 0
        for i in members:
            n = lengths[i]
            input_ids[r, col : col + n] = input_ids_list[i]
            position_ids[r, col : col + n] = np.arange(n)
            segment_ids[r, col : col + n] = i
            rows[i], starts[i] = r, col
            col += n
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    # float32 holds finfo(float16/bfloat16).min exactly; float64 needs its own.
    np_dtype = np.float64 if mask_dtype == torch.float64 else np.float32
    mask = np.where(same, 0.0, torch.finfo(mask_dtype).min).astype(np_dtype)
    return Packed(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids),
        token_type_ids=torch.zeros((len(layout), width), dtype=torch.long),
        attention_mask=torch.from_numpy(mask).to(mask_dtype),
        segment_ids=torch.from_numpy(segment_ids),
        rows=torch.from_numpy(rows),
        starts=torch.from_numpy(starts),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )


def collate_packed(enc, indices, row_length: int, pad_id: int, mask_dtype: torch.dtype = torch.float32):
    """The packed counterpart of ``core.batching.collate``: (Packed, labels, real token count), in ``indices`` order."""
    packed = pack([enc.input_ids[i] for i in indices], row_length, pad_id, mask_dtype)
    labels = torch.tensor([enc.labels[i] for i in indices], dtype=torch.long)
    return packed, labels, packed.n_tokens


def packed_hidden_states(backbone, packed: Packed) -> torch.Tensor:
    """Last hidden states [R, L, H] of a HF encoder (BertModel and friends) on a packed batch."""
    dtype = next(backbone.parameters()).dtype
    mask = packed.attention_mask
    if mask.dtype != dtype:
        mask = block_attention_mask(packed.segment_ids, dtype)
    out = backbone(
        input_ids=packed.input_ids,
        attention_mask=mask,
        position_ids=packed.position_ids,
        token_type_ids=packed.token_type_ids,
    )
    return out.last_hidden_state


def pool_segments(hidden: torch.Tensor, packed: Packed, pooling: str = "mean") -> torch.Tensor:
    """[R, L, H] packed states -> [N, H] sentence embeddings in the original sentence order."""
    if pooling == "cls":
        return hidden[packed.rows, packed.starts]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}: use 'mean' or 'cls'")
    flat = hidden.reshape(-1, hidden.shape[-1])
    seg = packed.segment_ids.reshape(-1)
    real = (seg >= 0).nonzero().squeeze(1)
    sums = flat.new_zeros((packed.n_sentences, flat.shape[-1])).index_add_(0, seg[real], flat[real])
    return sums / packed.lengths.to(flat.dtype).unsqueeze(1)


def packed_embeddings(backbone, packed: Packed, pooling: str = "mean") -> torch.Tensor:
    """Sentence embeddings [N, H] from one packed forward; equal to the padded forward + ``core.model.pool``."""
    return pool_segments(packed_hidden_states(backbone, packed), packed, pooling)
