"""CPU dropout from 16 random bits (core/cpu_dropout.py): the same distribution, gradient and evaluation as
``nn.Dropout``, seeded by torch's generator, and used by a real training run on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.backbones import load_backbone, load_tokenizer
from core.cpu_dropout import ATTENTION, FastDropout, use_fast_dropout
from core.model import MultiTaskModel
from core.train import train_run
from tests.conftest import TINY_BACKBONE, tiny_config


def test_keep_rate_and_scaling_match_nn_dropout():
    x = torch.ones(1_000_000)
    drop = FastDropout(0.1).train()
    y = drop(x)
    kept = y != 0
    # 1e6 draws: the keep rate's standard error is 3e-4, so 0.9 +- 0.002 fails only when the rate is wrong
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.003  # unbiased, as inverted dropout is
    # other rates, down to the 1/65536 resolution
    for p in (0.5, 0.25, 0.01):
        rate = (FastDropout(p).train()(x) != 0).float().mean().item()
        assert abs(rate - (1 - p)) < 0.003, (p, rate)


def test_gradient_is_the_mask_times_the_scale():
    x = torch.randn(64, 48, requires_grad=True)
    y = FastDropout(0.2).train()(x)
    y.sum().backward()
    expected = (y != 0).float() / 0.8
    assert torch.equal(x.grad, expected)


def test_evaluation_and_edges():
    x = torch.randn(10, 10)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    assert torch.count_nonzero(FastDropout(1.0).train()(x)) == 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        FastDropout(1.5)


def test_masks_follow_torch_seed():
    drop = FastDropout(0.1).train()
    x = torch.ones(4096)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    torch.manual_seed(4)
    c = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(load_backbone(TINY_BACKBONE), {"s": ["negative", "positive"]})


def test_swap_leaves_evaluation_identical_and_training_attention_equal_to_sdpa():
    tok = load_tokenizer(TINY_BACKBONE)
    enc = tok(
        ["short", "a much longer sentence, with padding for the other rows", "mid length one"],
        padding=True,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    plain, fast = _model(), _model()
    changed = use_fast_dropout(fast)
    # embeddings 1 + per layer 3 + the head 1, for one layer
    assert changed == {"modules": 5, "attention": True}
    assert fast.backbone.config._attn_implementation == ATTENTION
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(plain(ids, mask, "s"), fast(ids, mask, "s"))

    # Training mode with every dropout off but the attention's, which keeps everything (p = 1e-9 is below the
    # 1/65536 resolution, and nonzero, so the eager branch of the attention function runs): the eager branch
    # must compute what SDPA computes, padding included.
    fast.train()
    for m in fast.modules():
        if isinstance(m, FastDropout):
            m.p = 0.0
    fast.backbone.encoder.layer[0].attention.self.dropout = FastDropout(1e-9)
    with torch.no_grad():
        got = fast(ids, mask, "s")
        want = plain(ids, mask, "s")
    assert torch.allclose(got, want, atol=1e-5)


def test_cpu_training_run_uses_it(store):
    run_id = store.create_run(tiny_config(strategy="full_finetune", max_steps=2))
    train_run(store, run_id)
    log = store.log_path(run_id).read_text()
    assert "CPU dropout: {'modules': 6, 'attention': True}" in log  # 5 as above, plus the second head


def test_decoders_keep_sdpa_and_swapped_modules_keep_their_mode():
    """A decoder's attention is causal (SDPA reads a None mask as causal), which the eager branch does not
    compute: only bidirectional encoders are rerouted. Their dropout modules are still swapped, in the mode
    each had."""
    from transformers import GPT2Config, GPT2Model

    decoder = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)).eval()
    assert use_fast_dropout(decoder) == {"modules": 4, "attention": False}
    assert decoder.config._attn_implementation == "sdpa"
    assert all(not m.training for m in decoder.modules() if isinstance(m, FastDropout))
