"""A lean forward of a BERT encoder for prediction.

transformers' ``BertModel`` in eval mode computes, per layer: query, key and value projections, attention,
an output projection with a residual and a LayerNorm, then a GELU feed-forward with a residual and a
LayerNorm. ``LeanEncoder`` computes exactly that with plain ``torch.nn.functional`` calls on the model's own
tensors (LoRA's B matrices excepted: scaled copies), and skips the per-call machinery of the library (attention-interface lookup, keyword plumbing,
output records): at one sentence that machinery is a quarter of the time. ``pack`` adds oneDNN-prepacked
copies of the weights (query, key and value stacked into one matrix): at a few rows a plain CPU matmul
re-lays each weight out on every call.

It can also run the rows of several runs through one set of weights. A LoRA run's layers are the pretrained
layers plus low-rank changes on some projections (``Delta``), so its hidden states can ride in the same
matmuls as those of runs that froze the pretrained backbone, each block of rows adding its own run's changes.
The weights are then read once for all of them, and the matmuls are larger.

Nothing here decides whether a model may take this path: ``LeanEncoder.of`` returns None for any layer it does
not recognise, and ``Predictor.lean`` checks the lean forward against the model's own forward before using it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# The projections of a BERT layer, by their module path inside ``encoder.layer[i]``; the keys name a layer's
# LoRA deltas (peft's ``target_modules`` matched the modules' last names: query, value, dense ...).
PROJECTIONS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
GELU_APPROXIMATION = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


@dataclass(frozen=True)
class Delta:
    """One LoRA adapter on one projection: ``y += (x @ a.T) @ b.T``, with peft's scaling folded into ``b``
    (one multiplication fewer per call; a copy of an out x rank matrix)."""

    a: torch.Tensor  # (rank, in)
    b: torch.Tensor  # (out, rank), times the adapter's scaling

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a), self.b)


@dataclass
class Projection:
    """A linear layer's weight and bias, and optionally the same weight prepacked for oneDNN (``pack``): at a
    few rows, a plain CPU matmul re-lays the weight out on every call, which the packed copy does once."""

    weight: torch.Tensor | None  # (out, in); None once packed when the weight was a copy made here
    bias: torch.Tensor | None
    packed: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.width = self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        flat = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.packed, self.bias, "none", [], "")
        return flat.view(*x.shape[:-1], flat.shape[-1])

    def pack(self) -> int:
        """Prepack the weight (CPU, float32); the bytes it adds."""
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        return self.weight.numel() * self.weight.element_size()


def can_pack(weight: torch.Tensor) -> bool:
    """Whether oneDNN prepacking applies here: a CPU float32 weight and the two oneDNN operators present
    (private operators of this torch build, the ones its compiler uses for CPU linear layers)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@dataclass
class LeanLayer:
    """The base weights of one BERT layer (the model's own tensors), and its own LoRA deltas if any. Packed
    (``pack``), query, key and value are stacked into one prepacked matrix: one matmul instead of three."""

    query: Projection
    key: Projection
    value: Projection
    attention_output: Projection
    norm1: tuple[torch.Tensor, torch.Tensor, float]
    intermediate: Projection
    output: Projection
    norm2: tuple[torch.Tensor, torch.Tensor, float]
    heads: int
    approximate: str
    deltas: dict[str, Delta] = field(default_factory=dict)  # projection name (PROJECTIONS) -> LoRA delta
    qkv: Projection | None = None  # query, key and value stacked and prepacked (``pack``)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        blocks: list[tuple[slice, dict[str, Delta]]] | None = None,
    ) -> torch.Tensor:
        """The layer over ``hidden`` (batch, tokens, width). ``mask``: boolean (batch, 1, 1, tokens), True where a
        token may be attended to, or None without padding. ``blocks``: which rows add which LoRA deltas to the
        base weights (None: every row adds this layer's own)."""
        if blocks is None:
            blocks = [(slice(None), self.deltas)] if self.deltas else []
        batch, tokens, width = hidden.shape
        split = (batch, tokens, self.heads, width // self.heads)
        if self.qkv is not None:
            qkv = _project(hidden, self.qkv, blocks, ("query", "key", "value"), width)
            q, k, v = qkv.view(batch, tokens, 3, *split[2:]).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (
                _project(hidden, p, blocks, (name,), width).view(split).transpose(1, 2)
                for name, p in (("query", self.query), ("key", self.key), ("value", self.value))
            )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        context = context.transpose(1, 2).reshape(batch, tokens, width)
        attended = _project(context, self.attention_output, blocks, ("attention_output",), width)
        hidden = F.layer_norm(attended + hidden, (width,), *self.norm1)
        projected = _project(hidden, self.intermediate, blocks, ("intermediate",), self.intermediate.width)
        inner = F.gelu(projected, approximate=self.approximate)
        out = _project(inner, self.output, blocks, ("output",), width)
        return F.layer_norm(out + hidden, (width,), *self.norm2)

    @property
    def projections(self) -> list[Projection]:
        return [self.query, self.key, self.value, self.attention_output, self.intermediate, self.output]

    def pack(self) -> int:
        """Prepack the weights: query, key and value stacked into one packed matrix (the stacked copy is let
        go once packed), the others packed from the model's own; the bytes the packed copies add."""
        stacked = Projection(
            torch.cat([self.query.weight, self.key.weight, self.value.weight]),
            torch.cat([self.query.bias, self.key.bias, self.value.bias]),
        )
        added = stacked.pack()
        stacked.weight = None
        self.qkv = stacked
        return added + sum(p.pack() for p in (self.attention_output, self.intermediate, self.output))

    def unpack(self) -> None:
        self.qkv = None
        for p in self.projections:
            p.packed = None

    @classmethod
    def of(cls, layer: torch.nn.Module, config) -> LeanLayer | None:
        """The lean form of ``encoder.layer[i]`` of a BERT model (with or without peft LoRA adapters), or None if
        anything in it is not what this forward computes."""
        approximate = GELU_APPROXIMATION.get(getattr(config, "hidden_act", None))
        if approximate is None or getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            return None
        if getattr(layer, "chunk_size_feed_forward", 0):
            return None
        if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return None
        parts, deltas = {}, {}
        for name, path in PROJECTIONS.items():
            found = _linear(layer.get_submodule(path))
            if found is None:
                return None
            parts[name], delta = found
            if delta is not None:
                deltas[name] = delta
        norm1, norm2 = layer.attention.output.LayerNorm, layer.output.LayerNorm
        if not all(isinstance(n, torch.nn.LayerNorm) and n.elementwise_affine for n in (norm1, norm2)):
            return None
        if any(parts[name][1] is None for name in ("query", "key", "value")):
            return None
        return cls(
            query=Projection(*parts["query"]),
            key=Projection(*parts["key"]),
            value=Projection(*parts["value"]),
            attention_output=Projection(*parts["attention_output"]),
            norm1=(norm1.weight, norm1.bias, norm1.eps),
            intermediate=Projection(*parts["intermediate"]),
            output=Projection(*parts["output"]),
            norm2=(norm2.weight, norm2.bias, norm2.eps),
            heads=int(config.num_attention_heads),
            approximate=approximate,
            deltas=deltas,
        )


def _project(
    x: torch.Tensor,
    projection: Projection,
    blocks: list[tuple[slice, dict[str, Delta]]],
    names: tuple[str, ...],
    width: int,
) -> torch.Tensor:
    """The projection over every row, then each block's LoRA deltas on its rows; ``names`` are the projections
    stacked in its weight, ``width`` columns each."""
    y = projection(x)
    for rows, deltas in blocks:
        for i, name in enumerate(names):
            delta = deltas.get(name)
            if delta is not None:
                y[rows, :, i * width : (i + 1) * width] += delta(x[rows])
    return y


def _linear(module: torch.nn.Module) -> tuple[tuple[torch.Tensor, torch.Tensor | None], Delta | None] | None:
    """(weight, bias) of a plain linear layer, or of a peft LoRA layer's base with its one adapter as a Delta;
    None for anything else (merged or several adapters, DoRA, LoRA biases, transposed weights)."""
    if type(module) is torch.nn.Linear:
        return (module.weight.detach(), None if module.bias is None else module.bias.detach()), None
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(module, "lora_A"):
        return None
    active = list(getattr(module, "active_adapters", []))
    if (
        len(active) != 1
        or getattr(module, "merged", True)
        or getattr(module, "disable_adapters", True)
        or getattr(module, "fan_in_fan_out", False)
        or active[0] in getattr(module, "lora_variant", {})
        or getattr(module, "lora_bias", {}).get(active[0], False)
        or set(module.lora_A) != {active[0]}
    ):
        return None
    a, b = module.lora_A[active[0]], module.lora_B[active[0]]
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None:
        return None
    weights = (base.weight.detach(), None if base.bias is None else base.bias.detach())
    return weights, Delta(a.weight.detach(), b.weight.detach() * float(module.scaling[active[0]]))


@dataclass
class LeanEncoder:
    """A BERT backbone's embeddings module and its layers in lean form."""

    embeddings: torch.nn.Module
    layers: list[LeanLayer]

    @classmethod
    def of(cls, backbone: torch.nn.Module) -> LeanEncoder | None:
        config = getattr(backbone, "config", None)
        if getattr(config, "model_type", None) != "bert" or not hasattr(backbone, "embeddings"):
            return None
        blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
        if not isinstance(blocks, torch.nn.ModuleList):
            return None
        layers = [LeanLayer.of(layer, config) for layer in blocks]
        return None if any(layer is None for layer in layers) else cls(backbone.embeddings, layers)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the layers' projection weights (what prepacking copies)."""
        return sum(p.weight.numel() * p.weight.element_size() for layer in self.layers for p in layer.projections)

    def pack(self) -> int:
        """Prepack every layer's weights for oneDNN where it applies; the bytes added (0: nothing packed)."""
        weights = [p.weight for layer in self.layers for p in layer.projections]
        if not weights or not all(can_pack(w) for w in weights):
            return 0
        return sum(layer.pack() for layer in self.layers)

    def unpack(self) -> None:
        for layer in self.layers:
            layer.unpack()

    @property
    def has_deltas(self) -> bool:
        return any(layer.deltas for layer in self.layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids=input_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state, as ``backbone(input_ids, attention_mask).last_hidden_state``."""
        return self.run(self.embed(input_ids), attention_mask_for(attention_mask), 0)

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, start: int) -> torch.Tensor:
        """Layers ``start`` to the top over ``hidden``, with this model's own deltas."""
        for layer in self.layers[start:]:
            hidden = layer.forward(hidden, mask)
        return hidden


def attention_mask_for(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The boolean (batch, 1, 1, tokens) mask the lean layers take; None when nothing is padded."""
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


def stacked_mask(mask: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    """The mask of ``copies`` row blocks of the same sentences stacked along the batch."""
    return mask if mask is None or copies == 1 else mask.repeat(copies, 1, 1, 1)
