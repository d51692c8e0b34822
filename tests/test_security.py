"""Hostile input: the dashboard's network exposure, run ids and paths that try to leave the runs folder,
pickles, remote code, and shell commands. Each check tries the attack for real or reads the whole code base."""

from __future__ import annotations

import ast
import json
import os
import pickle
import tomllib
from pathlib import Path

import pytest

from core.errors import FreezeLabError, InvalidRunId, RunNotFound
from core.store import validate_run_id
from core.uploads import save_upload, upload_path
from tests.conftest import ROOT, run_cli, tiny_config

CODE = sorted(
    p for p in [ROOT / "app.py", *ROOT.glob("core/**/*.py"), *ROOT.glob("pages/**/*.py"), *ROOT.glob("tests/**/*.py")]
)


# -- the dashboard's exposure ----------------------------------------------------------------------------------
def test_the_dashboard_listens_on_localhost_with_xsrf_protection():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "localhost"
    assert server.get("enableXsrfProtection", True) is True, "XSRF protection stays on"
    assert server.get("enableCORS", True) is True, "CORS protection stays on (XSRF needs it)"
    assert config["browser"].get("serverAddress", "localhost") == "localhost"


# -- run ids and paths -------------------------------------------------------------------------------------------
TRAVERSAL = [
    "../x",
    "..",
    "../../etc",
    "/etc",
    "/tmp/x",
    "a/../../b",
    "a/b",
    "~root",
    "C:\\x",
    "\\\\host\\share",
    "x\x00",
]


@pytest.mark.parametrize("run_id", TRAVERSAL)
def test_paths_as_run_ids_are_refused_by_every_store_entry(store, run_id):
    store.create_run(tiny_config(), run_id="real")
    for action in (
        store.path,
        store.existing_path,
        store.record,
        store.delete_run,
        store.restore_run,
        store.read_config,
        store.study_path,
    ):
        with pytest.raises(InvalidRunId):
            action(run_id)
    assert store.run_ids() == ["real"]


@pytest.mark.parametrize("command", ["show", "delete", "restore", "resume", "cancel", "predict"])
def test_the_cli_refuses_paths_as_run_ids(tmp_path, command):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    args = [command, "../outside"] + (["some text"] if command == "predict" else [])
    out = run_cli(*args, runs_dir=tmp_path / "runs")
    assert out.returncode == 2 and "not valid" in out.stderr and "Traceback" not in out.stderr
    assert (outside / "config.json").read_text() == "{}"


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the runs folder that looks like a run."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (target / "status.json").write_text('{"state": "completed"}')
    (target / "secret.txt").write_text("do not touch")
    return target


def test_a_symlinked_run_folder_is_not_listed_read_moved_or_deleted(store, outside):
    store.root.mkdir(parents=True)
    (store.root / "linked").symlink_to(outside, target_is_directory=True)
    assert store.run_ids() == [] and store.list_runs() == []
    for action in (store.record, store.delete_run, store.read_config, store.existing_path):
        with pytest.raises(InvalidRunId, match="symbolic link"):
            action("linked")
    out = run_cli("delete", "linked", runs_dir=store.root)
    assert out.returncode == 2 and "symbolic link" in out.stderr
    assert (outside / "secret.txt").read_text() == "do not touch" and (store.root / "linked").is_symlink()


def test_a_symlink_in_the_trash_is_not_restored(store, outside):
    (store.root / ".trash").mkdir(parents=True)
    (store.root / ".trash" / "linked").symlink_to(outside, target_is_directory=True)
    assert store.trashed_run_ids() == []
    with pytest.raises(RunNotFound):
        store.restore_run("linked")
    assert not (store.root / "linked").exists() and (outside / "secret.txt").is_file()


def test_a_train_state_naming_files_outside_its_folder_is_refused(store, tmp_path):
    from core import checkpoint as ckpt
    from core.errors import CheckpointError

    run_id = store.create_run(tiny_config())
    ckpt_dir = store.checkpoint_dir(run_id)
    ckpt_dir.mkdir()
    (tmp_path / "evil.safetensors").write_bytes(b"x")
    (ckpt_dir / "train_state.json").write_text(
        json.dumps({"step": 1, "weights_file": "../../../evil.safetensors", "tensors_file": "t.safetensors"})
    )
    with pytest.raises(CheckpointError, match="outside its folder"):
        ckpt.load_weights(ckpt_dir)


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b.csv", "\x00.csv", "....//x.csv", "C:\\x.csv"]
)
def test_upload_names_stay_inside_the_uploads_folder(tmp_path, filename):
    path = save_upload(tmp_path / "runs", filename, b"text,label\na,b\n")
    uploads = (tmp_path / "runs" / "uploads").resolve()
    assert path.resolve().parent == uploads and path.is_file()
    assert upload_path(tmp_path / "runs", filename, b"x").resolve().parent == uploads


def test_validate_run_id_is_a_full_match():
    for bad in ("ok\n", "ok\r\n", "ok\n../x"):
        with pytest.raises(InvalidRunId):
            validate_run_id(bad)
    assert validate_run_id("20260101-000000-ok-1a2b") == "20260101-000000-ok-1a2b"


# -- weights: safetensors only; pickles never run --------------------------------------------------------------
class _Boom:
    """A pickle that writes a marker file when it is unpickled: the attack a .bin/.pt file can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _evil_pickle(path: Path, marker: Path) -> None:
    import zipfile

    payload = pickle.dumps({"weight": _Boom(marker)})
    with zipfile.ZipFile(path, "w") as z:  # torch's zip layout, so a loader takes it for a checkpoint
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    path.with_suffix(".pkl").write_bytes(payload)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch.load(weights_only=True) saw it
def test_a_malicious_pickle_in_a_checkpoint_or_a_backbone_folder_never_runs(store, tmp_path):
    from core.backbones import load_backbone, packaged_minilm_dir
    from core.checkpoint import load_model
    from core.train import train_run

    marker = tmp_path / "marker"
    run_id = store.create_run(tiny_config(max_steps=2, max_test_examples=20))
    train_run(store, run_id)
    ckpt_dir = store.checkpoint_dir(run_id)
    _evil_pickle(ckpt_dir / "pytorch_model.bin", marker)
    load_model(ckpt_dir)  # reads model.safetensors, nothing else
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "config.json").write_text((packaged_minilm_dir() / "config.json").read_text())
    _evil_pickle(backbone / "pytorch_model.bin", marker)
    try:
        load_backbone(str(backbone))
    except FreezeLabError:
        pass  # refused with a message: fine
    except Exception as exc:  # noqa: BLE001 - the point is what did not happen
        assert "weights_only" in str(exc) or "Unsupported" in str(exc) or "pickle" in str(exc).lower(), exc
    assert not marker.exists(), "unpickling ran code"


def test_checkpoints_hold_safetensors_and_json_only(store):
    from core.train import train_run

    run_id = store.create_run(
        tiny_config(strategy="bitfit", max_steps=4, checkpoint_every_steps=2, max_test_examples=20)
    )
    store.request_stop(run_id)
    train_run(store, run_id)  # a stopped run: weights and a resume unit
    files = [p for p in store.checkpoint_dir(run_id).rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= {".safetensors", ".json", ".txt"}, sorted(p.name for p in files)


# -- the code base --------------------------------------------------------------------------------------------------
def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # x().eval() is a method, not eval()
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_code_base_never_trusts_remote_code_unpickles_or_uses_a_shell():
    problems = []
    assert len(CODE) > 30
    for path in CODE:
        where = path.relative_to(ROOT)
        for call in _calls(path):
            name = _name(call.func)
            trust = _keyword(call, "trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                problems.append(f"{where}:{call.lineno} trust_remote_code is not False")
            if name.endswith("torch.load"):
                weights_only = _keyword(call, "weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    problems.append(f"{where}:{call.lineno} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "marshal.loads"):
                if path.name != "test_security.py":
                    problems.append(f"{where}:{call.lineno} {name}")
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "eval", "exec"):
                problems.append(f"{where}:{call.lineno} {name}")
            shell = _keyword(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                problems.append(f"{where}:{call.lineno} shell={ast.unparse(shell)}")
            if name.split(".")[-1] in ("Popen", "run", "call", "check_call", "check_output") and name.startswith(
                "subprocess"
            ):
                if call.args and isinstance(call.args[0], (ast.JoinedStr, ast.BinOp, ast.Constant)):
                    problems.append(f"{where}:{call.lineno} a command line as one string")
    assert problems == []


def test_every_from_pretrained_says_trust_remote_code_false():
    """Explicit, so a future default change in transformers cannot turn remote code on."""
    missing = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path in CODE
        if "tests" not in path.parts
        for call in _calls(path)
        if _name(call.func).endswith("from_pretrained") and _keyword(call, "trust_remote_code") is None
    ]
    assert missing == []


def test_the_worker_command_is_an_argument_list_with_a_validated_run_id(store, monkeypatch):
    import subprocess

    from core.runner import Runner

    seen = []

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            seen.append((cmd, kwargs))
            self.pid = os.getpid()

        def poll(self):
            return None

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    run_id = store.create_run(tiny_config())
    Runner(store)._start_local(run_id, resume=False)
    cmd, kwargs = seen[0]
    assert isinstance(cmd, list) and cmd[-1] == run_id and not kwargs.get("shell")
    assert validate_run_id(cmd[-1]) == run_id
