"""The lean forward (core/lean.py) against the library's own BERT forward, on the packaged MiniLM cut to 2 layers.

It must give the same hidden states (within 1e-5) with plain and with prepacked weights, with LoRA adapters whose
changes are not zero, and when rows of several models ride through one model's weights; and it must refuse
what it does not compute, so that prediction falls back to the model's own forward.
"""

from __future__ import annotations

import pytest
import torch

from core.backbones import load_backbone, load_tokenizer
from core.lean import LeanEncoder, LeanLayer, attention_mask_for, stacked_mask
from core.strategies import inject_lora

SPEC = "minilm-l6:2"
TEXTS = ["a short one .", "a second , clearly longer sentence , so that the first one is padded in the batch ."]


@pytest.fixture(scope="module")
def batch():
    enc = load_tokenizer(SPEC)(TEXTS, padding=True, return_tensors="pt")
    assert not bool(enc["attention_mask"].all()), "the batch must hold padding"
    return enc["input_ids"], enc["attention_mask"]


def _lora_backbone(seed: int, targets: list[str]):
    """The pretrained backbone with LoRA adapters whose B matrices are random: their changes are not zero."""
    backbone = inject_lora(
        load_backbone(SPEC), {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": targets}
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return backbone


def _gap(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> float:
    keep = attention_mask.unsqueeze(-1).to(a.dtype)  # padded positions are never read
    return float(((a - b) * keep).abs().max())


@torch.inference_mode()
@pytest.mark.parametrize("packed", [False, True])
def test_the_lean_forward_gives_the_models_own_hidden_states(batch, packed):
    input_ids, attention_mask = batch
    backbone = load_backbone(SPEC).eval()
    lean = LeanEncoder.of(backbone)
    assert lean is not None and not lean.has_deltas
    if packed:
        assert lean.pack() == lean.weight_bytes > 0
        for layer in lean.layers:  # query, key and value as one packed matrix; the stacked copy is let go
            assert layer.qkv.packed is not None and layer.qkv.weight is None
            assert all(p.packed is not None for p in (layer.attention_output, layer.intermediate, layer.output))
    own = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert _gap(lean.forward(input_ids, attention_mask), own, attention_mask) <= 1e-5
    # One sentence alone (no padding, no mask) too.
    one = backbone(input_ids=input_ids[1:], attention_mask=attention_mask[1:]).last_hidden_state
    assert attention_mask_for(attention_mask[1:]) is None
    assert _gap(lean.forward(input_ids[1:], attention_mask[1:]), one, attention_mask[1:]) <= 1e-5


@torch.inference_mode()
@pytest.mark.parametrize("targets", [["query", "value"], ["query", "key", "value", "dense"]])
def test_lora_adapters_are_computed_as_peft_computes_them(batch, targets):
    input_ids, attention_mask = batch
    backbone = _lora_backbone(0, targets)
    lean = LeanEncoder.of(backbone)
    assert lean is not None and lean.has_deltas
    expected = {"query", "value"} if targets == ["query", "value"] else set(lean.layers[0].deltas)
    assert set(lean.layers[0].deltas) == expected
    if "dense" in targets:  # "dense" names the attention output and both feed-forward projections
        assert expected == {"query", "key", "value", "attention_output", "intermediate", "output"}
    own = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    plain = load_backbone(SPEC).eval()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert _gap(own, plain, attention_mask) > 1e-3, "the adapters must change the output, or this proves nothing"
    assert _gap(lean.forward(input_ids, attention_mask), own, attention_mask) <= 1e-5


@torch.inference_mode()
def test_rows_of_several_models_ride_through_one_models_weights(batch):
    """The frozen backbone's rows and two LoRA models' rows in the same matmuls of the pretrained weights, each
    block adding its own adapters: every model's hidden states as it computes them alone."""
    input_ids, attention_mask = batch
    frozen = LeanEncoder.of(load_backbone(SPEC).eval())
    frozen.pack()
    riders = [LeanEncoder.of(_lora_backbone(seed, ["query", "value"])) for seed in (1, 2)]
    alone = [m.forward(input_ids, attention_mask) for m in (frozen, *riders)]
    hidden = frozen.embed(input_ids)
    mask = attention_mask_for(attention_mask)
    rows = hidden.shape[0]
    stacked = torch.cat([hidden] * 3)
    for i, layer in enumerate(frozen.layers):
        blocks = [(slice((j + 1) * rows, (j + 2) * rows), r.layers[i].deltas) for j, r in enumerate(riders)]
        stacked = layer.forward(stacked, stacked_mask(mask, 3), blocks)
    for j, expected in enumerate(alone):
        assert _gap(stacked[j * rows : (j + 1) * rows], expected, attention_mask) <= 1e-5, j
    assert _gap(alone[1], alone[2], attention_mask) > 1e-3, "the two riders must differ"


def test_what_the_lean_forward_does_not_compute_is_refused():
    backbone = load_backbone(SPEC).eval()
    backbone.config.hidden_act = "relu"  # an activation the lean layer does not implement
    assert LeanEncoder.of(backbone) is None
    backbone = _lora_backbone(0, ["query"])
    layer = backbone.encoder.layer[0]
    layer.attention.self.query.merged_adapters = ["default"]  # merged: the base weight already holds the change
    assert LeanLayer.of(layer, backbone.config) is None


def test_a_predictor_whose_lean_forward_does_not_apply_uses_its_own(tmp_path):
    """Prediction falls back to the model's own forward, with the reason, and gives the same probabilities."""
    from core.model import MultiTaskModel
    from core.predict import Predictor

    model = MultiTaskModel(load_backbone(SPEC), {"topic": ["a", "b", "c"]})
    lean = Predictor(model, load_tokenizer(SPEC), {"max_length": 32}, torch.device("cpu"))
    assert lean.lean() is not None and "checked" in lean.lean_note
    fallback = Predictor(model, load_tokenizer(SPEC), {"max_length": 32}, torch.device("cpu"))
    model.backbone.encoder.layer[1].chunk_size_feed_forward = 1  # a forward the lean layer does not do
    assert fallback.lean() is None and "architecture" in fallback.lean_note
    model.backbone.encoder.layer[1].chunk_size_feed_forward = 0  # the same arithmetic either way
    a, b = lean.probabilities(TEXTS)["topic"], fallback.probabilities(TEXTS)["topic"]
    assert float((a - b).abs().max()) <= 1e-5
