"""Export to sentence-transformers: real tiny runs, exported, loaded back with SentenceTransformer offline."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.checkpoint import load_model
from core.export import HEADS_FILE, HEADS_JSON, ExportError, export_run, export_zip
from core.predict import Predictor
from core.store import RunStore
from core.train import train_run
from tests.conftest import tiny_config

TEXTS = [
    "the central bank raised interest rates again",
    "a dull , lifeless film",
    "the striker scored twice",
    "a long sentence that runs well past the thirty-two tokens this tiny run keeps, so that truncation "
    "must happen exactly where freezelab truncated it during training and prediction",
]
# A few steps and no evaluation before the end: a run in about a second. full_finetune pools with CLS (the exported Pooling module must follow); LoRA pools with the mean and
# adapts three projections, which the export merges into the plain encoder weights.
RUNS = {
    "full_finetune": {"strategy": "full_finetune", "pooling": "cls"},
    "lora": {"strategy": "lora", "lora_r": 4, "lora_alpha": 8, "lora_targets": ["query", "key", "value"]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[RunStore, dict[str, str]]:
    store = RunStore(tmp_path_factory.mktemp("export") / "runs")
    run_ids = {}
    for name, overrides in RUNS.items():
        run_id = store.create_run(
            tiny_config(max_steps=3, eval_every_steps=100, checkpoint_every_steps=100, **overrides)
        )
        assert train_run(store, run_id) == "completed"
        run_ids[name] = run_id
    return store, run_ids


def _freezelab_embeddings(ckpt_dir, texts: list[str]) -> torch.Tensor:
    model, tokenizer, meta = load_model(ckpt_dir, "cpu")
    enc = tokenizer(texts, truncation=True, max_length=meta["max_length"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model.embed(enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_folder_encodes_and_classifies_like_freezelab(trained, tmp_path, name):
    from sentence_transformers import SentenceTransformer

    store, run_ids = trained
    run_id = run_ids[name]
    ckpt_dir = store.checkpoint_dir(run_id)
    if name == "lora":  # the adapters really moved: a merge that dropped them would be caught below
        model, _, _ = load_model(ckpt_dir, "cpu")
        assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    out = export_run(
        ckpt_dir, tmp_path / "export", config=store.read_config(run_id), summary=store.read_summary(run_id)
    )
    assert out == tmp_path / "export"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for required in (
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        HEADS_FILE,
        HEADS_JSON,
        "README.md",
    ):
        assert required in files, required
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # safetensors only
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if "lora" in k]  # merged: a plain encoder
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] == (name == "full_finetune")
    assert pooling["pooling_mode_mean_tokens"] == (name == "lora")
    readme = (out / "README.md").read_text()
    assert run_id in readme and RUNS[name]["strategy"] in readme and "SentenceTransformer(" in readme

    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 32
    embeddings = st.encode(TEXTS, convert_to_tensor=True).cpu()
    expected = _freezelab_embeddings(ckpt_dir, TEXTS)
    assert embeddings.shape == expected.shape
    assert torch.allclose(embeddings, expected, atol=1e-5, rtol=0), (embeddings - expected).abs().max()

    heads = load_file(str(out / HEADS_FILE))
    info = json.loads((out / HEADS_JSON).read_text())
    assert info["pooling"] == RUNS[name].get("pooling", "mean")
    predicted = Predictor.from_run(store, run_id, device="cpu").predict(TEXTS)
    for task, labels in info["tasks"].items():
        logits = embeddings @ heads[f"{task}.weight"].T + heads[f"{task}.bias"]
        assert [labels[i] for i in logits.argmax(-1).tolist()] == [p["tasks"][task]["label"] for p in predicted]


def test_export_refuses_occupied_folders_and_missing_checkpoints(trained, tmp_path):
    store, run_ids = trained
    ckpt_dir = store.checkpoint_dir(run_ids["full_finetune"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_run(ckpt_dir, occupied)
    with pytest.raises(ExportError, match="not an earlier export"):  # overwrite never deletes foreign folders
        export_run(ckpt_dir, occupied, overwrite=True)
    assert (occupied / "notes.txt").read_text() == "keep me"

    target = export_run(ckpt_dir, tmp_path / "export")
    with pytest.raises(ExportError, match="not empty"):
        export_run(ckpt_dir, target)
    assert export_run(ckpt_dir, target, overwrite=True) == target  # an earlier export is replaced
    assert (target / "modules.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind

    with pytest.raises(ExportError, match="checkpoint"):
        export_run(tmp_path / "nowhere" / "checkpoint", tmp_path / "other")
    empty_ckpt = tmp_path / "run" / "checkpoint"
    empty_ckpt.mkdir(parents=True)
    with pytest.raises(ExportError, match="checkpoint"):
        export_run(empty_ckpt, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_zip_holds_the_folder(trained):
    store, run_ids = trained
    run_id = run_ids["lora"]
    data = export_zip(store.checkpoint_dir(run_id), summary=store.read_summary(run_id))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        root = f"{run_id}-sentence-transformer"
        assert f"{root}/modules.json" in names
        assert all(n.startswith(root + "/") for n in names)
        assert json.loads(archive.read(f"{root}/{HEADS_JSON}"))["tasks"]["sentiment"] == ["negative", "positive"]
