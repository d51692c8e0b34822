"""The dashboard in a real Chromium: launch a run, watch it complete, compare it, try sentences on it.

Runs `streamlit run app.py` as a real server on a fresh runs folder and drives Debian's chromium
through Playwright (no browser download: CI installs the `chromium` package). Screenshots of each
page go to screenshots/; with FREEZELAB_UPDATE_SCREENSHOTS=1 they are also copied to docs/screenshots/.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_model
from core.records import Progress, RunState
from core.store import RunStore
from core.uploads import upload_path
from tests.conftest import ROOT, tiny_config
from tests.dashboard_fixtures import (
    free_port,
    kill_everything_for,
    live_run,
    seeded_once,
    start_stand_in,
    stop_stand_in,
    wait_for,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
RUN_NAME = "browser run"
LIVE_NAME = "live run"
SENTENCES = ["Shares tumbled after the central bank raised interest rates.", "A dull, lifeless and badly acted film."]
TRAIN_TIMEOUT = 420  # seconds for the launched run to complete (a few dozen on an idle 2-core machine)


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def serve(store: RunStore, log_path: Path):
    """A real `streamlit run app.py` on a free port, serving ``store``; everything it started dies after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FREEZELAB_RUNS_DIR": str(store.root),
        "FREEZELAB_CONCURRENCY": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 90
        while not _health(url):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not come up on {url} (exit code {proc.poll()}):\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        kill_everything_for(store)  # the runner and its worker live in their own session


@pytest.fixture
def server(tmp_path):
    """A fresh runs folder under a short path (the sidebar shows it in the screenshots), served for real."""
    short = Path(tempfile.mkdtemp(prefix="freezelab-"))
    store = RunStore(short / "runs")
    try:
        with serve(store, tmp_path / "streamlit.log") as url:
            yield url, store
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does); "
            "this test never downloads a browser."
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)  # the first page run imports torch and loads a model: slow on a busy CI box
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            pg = context.new_page()
            pg.set_default_timeout(90_000)
            yield pg
        finally:
            browser.close()


def screenshot(pg, name: str, readme: bool = True) -> Path:
    """A full-page screenshot: Streamlit scrolls inside its main element, so grow the viewport to its height first.
    ``readme``: one the README shows (copied to docs/screenshots/ in screenshot mode)."""
    height = 0
    for _ in range(5):  # charts re-lay out at a new size: grow until the height holds still
        new = int(pg.evaluate("() => (document.querySelector('[data-testid=stMain]') || document.body).scrollHeight"))
        if new <= height:
            break
        height = new
        pg.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], height)})
        pg.wait_for_timeout(700)
    path = ROOT / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    pg.screenshot(path=str(path), full_page=True)
    pg.set_viewport_size(VIEWPORT)
    if readme and os.environ.get("FREEZELAB_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs / f"{name}.png")
    assert path.stat().st_size > 20_000, f"{path} looks blank"
    return path


def main_text(pg) -> str:
    return pg.get_by_role("main").inner_text()


def test_launch_train_compare_and_predict_in_a_real_browser(page, server, tmp_path):
    from playwright.sync_api import expect

    url, store = server
    pg = page

    # -- Launch: a cheap run (2-layer backbone, 40 examples per task, 32 tokens, 100 test sentences a task) ---
    pg.goto(url)
    expect(pg.get_by_role("heading", name="Launch runs")).to_be_visible()
    launch = pg.get_by_role("button", name=re.compile(r"^Launch \("))
    expect(launch).to_be_enabled()
    expect(pg.get_by_text("22.57M")).to_be_visible()  # total parameters of the full MiniLM-L6
    pg.get_by_role("combobox", name="Backbone").click()
    pg.get_by_role("option", name=re.compile(r"^minilm-l6:2 ")).click()
    expect(pg.get_by_text("MiniLM-L6 cut to its bottom 2 layers")).to_be_visible()
    expect(pg.get_by_text("15.47M")).to_be_visible()  # the diagram's totals follow the backbone
    examples = pg.get_by_role("spinbutton", name="Training examples (0 = all)")
    expect(examples).to_have_count(2)
    for i in range(2):
        examples.nth(i).fill("40")
        examples.nth(i).press("Enter")
    pg.get_by_text("Training settings").click()
    tokens = pg.get_by_role("spinbutton", name="Max tokens per sentence")
    tokens.fill("32")
    tokens.press("Enter")
    for label, value in (("Validation sentences per task", "100"), ("Test sentences per task (0 = all)", "100")):
        box = pg.get_by_role("spinbutton", name=label)
        box.fill(value)
        box.press("Enter")
    name = pg.get_by_role("textbox", name="Run name (optional)")
    name.fill(RUN_NAME)
    name.press("Enter")
    expect(name).to_have_value(RUN_NAME)
    expect(examples.nth(1)).to_have_value("40")
    pg.wait_for_timeout(1500)  # the reruns of those edits settle before Launch reads them
    expect(launch).to_have_text("Launch (1 run)")
    launch.click()
    queued = pg.get_by_text(re.compile(r"Queued 1 run\(s\): \S+\. Follow them on the Runs page\."))
    expect(queued).to_be_visible()
    run_id = re.search(r"Queued 1 run\(s\): (\S+)\.", queued.inner_text()).group(1)
    assert store.exists(run_id) and store.read_status(run_id).state in (
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.COMPLETED,
    )
    cfg = store.read_config(run_id)
    assert (cfg.backbone, cfg.name, cfg.max_length) == ("minilm-l6:2", RUN_NAME, 32)
    assert (cfg.max_eval_examples, cfg.max_test_examples) == (100, 100)
    assert [t.max_train_examples for t in cfg.tasks] == [40, 40]
    pg.locator(".js-plotly-plot").first.wait_for()
    screenshot(pg, "launch")

    # -- Runs: the run appears, trains in the background and completes ------------------------------------
    pg.get_by_role("link", name="Runs").click()
    expect(pg.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(pg.get_by_role("heading", name=re.compile(rf"^(⏳|🏃|✅) {RUN_NAME}$"))).to_be_visible()
    done = pg.get_by_role("heading", name=f"✅ {RUN_NAME}")

    def completed() -> bool:
        status = store.read_status(run_id)
        if status.state in (RunState.FAILED, RunState.STOPPED):
            pytest.fail(f"the launched run ended {status.state}: {status.error}\n{store.read_log_tail(run_id, 30)}")
        if status.state != RunState.COMPLETED:
            return False
        pg.reload()  # the details part reads the run once per page run; the table alone refreshes itself
        try:
            done.wait_for(timeout=30_000)
        except Exception:  # noqa: BLE001 - shown as a timeout below
            return False
        return True

    wait_for(completed, TRAIN_TIMEOUT, f"run {run_id} to show as completed", interval=2)
    expect(pg.get_by_text("1 of 1 runs shown · 0 queued or running")).to_be_visible()
    expect(pg.get_by_role("button", name="Save tags and notes")).to_be_visible()
    pg.wait_for_timeout(2500)  # one refresh of the live table
    screenshot(pg, "runs")

    # -- Compare: the decision view first, then the run's curves ---------------------------------------------
    pg.get_by_role("link", name="Compare").click()
    expect(pg.get_by_role("heading", name="Compare runs")).to_be_visible()
    for tab in ("Decision", "Curves", "Results", "Config diff", "Per class"):
        expect(pg.get_by_role("tab", name=tab)).to_be_visible()
    expect(pg.get_by_role("tab", name="Decision")).to_have_attribute("aria-selected", "true")
    expect(pg.get_by_text(re.compile("^Wall time: the whole run"))).to_be_visible()
    pg.get_by_role("tab", name="Curves").click()
    plot = pg.locator(".js-plotly-plot").first
    expect(plot).to_be_visible()
    expect(plot.locator("path.js-line").first).to_be_attached()  # a drawn curve, not an empty chart
    expect(pg.get_by_text("topic: validation accuracy")).to_be_visible()
    expect(pg.get_by_text("sentiment: validation accuracy")).to_be_visible()
    expect(pg.get_by_text("topic: training loss")).to_be_visible()
    screenshot(pg, "compare-curves", readme=False)

    # -- Playground: predictions of both tasks for typed sentences -------------------------------------------
    pg.get_by_role("link", name="Playground").click()
    expect(pg.get_by_role("heading", name="Playground")).to_be_visible()
    box = pg.get_by_role("textbox", name="Sentences, one a line")
    box.fill("\n".join(SENTENCES))
    box.press("Control+Enter")
    for sentence in SENTENCES:
        expect(pg.locator("blockquote").filter(has_text=sentence)).to_be_visible()
    expect(
        pg.get_by_text(re.compile(r"^2 sentence\(s\): model computation [\d,]+ ms \(drawing the page not"))
    ).to_be_visible()
    expect(pg.locator(".js-plotly-plot")).to_have_count(4)  # a probability chart per sentence and task
    expect(pg.get_by_role("heading", name="Predict a whole file")).to_be_visible()
    labels = {task: set(t.label_names) for task, t in store.read_summary(run_id).tasks.items()}
    text = main_text(pg)
    predicted = {task: re.findall(rf"^{task}: (\S+)$", text, flags=re.M) for task in ("topic", "sentiment")}
    assert {task: len(found) for task, found in predicted.items()} == {"topic": 2, "sentiment": 2}, text
    for task, found in predicted.items():
        assert set(found) <= labels[task], (task, found, labels[task])
    screenshot(pg, "playground")

    # -- Playground: a whole file, uploaded through the browser, stays on the Playground ---------------------
    upload = tmp_path / "reviews.csv"
    upload.write_text("review,stars\n" + "\n".join(f'"{s}",{i}' for i, s in enumerate(SENTENCES)) + "\n")
    pg.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(upload))
    expect(pg.get_by_role("combobox", name="Text column")).to_be_visible()
    expect(pg.get_by_role("button", name="Predict the column")).to_be_visible()
    assert upload_path(store.root, upload.name, upload.read_bytes()).is_file(), "kept under the runs folder"
    # Before core/uploads.py, the Playground imported the Launch page for its upload helper, and importing a
    # page runs it: the whole Launch form appeared under the Playground.
    expect(pg.get_by_role("heading", name="Launch runs")).to_have_count(0)
    expect(pg.get_by_role("button", name=re.compile(r"^Launch \("))).to_have_count(0)
    expect(pg.get_by_role("heading", name="Playground")).to_have_count(1)
    pg.get_by_role("button", name="Predict the column").click()
    expect(pg.get_by_role("button", name="Download predictions")).to_be_visible()


@pytest.fixture
def live_server(tmp_path, tmp_path_factory):
    """The seeded runs (2 strategies x 2 seeds, trained) plus a run that is training right now, served for real."""
    short = Path(tempfile.mkdtemp(prefix="freezelab-"))
    store = RunStore(short / "runs")
    shutil.copytree(seeded_once(tmp_path_factory)["root"], store.root)
    worker = start_stand_in()
    try:
        live = live_run(store, tiny_config(name=LIVE_NAME), worker, Progress(step=0, total_steps=20))
        with serve(store, tmp_path / "streamlit.log") as url:
            yield url, store, live
    finally:
        stop_stand_in(worker)
        shutil.rmtree(short, ignore_errors=True)


def download_bytes(pg, button: str) -> bytes:
    """The file a download button gives. One retry, as a user would click again: once in CI Chromium reported the
    download "canceled" (the page refreshes every 2 s for the live run beside it); the same test passed alone and
    in the CI run before. A second failure is a real one."""
    from playwright.sync_api import Error

    for attempt in (1, 2):
        try:
            with pg.expect_download(timeout=90_000) as download:
                pg.get_by_role("button", name=button).click()
            return Path(download.value.path()).read_bytes()
        except Error:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_live_pages_urls_downloads_and_kept_forms_in_a_real_browser(page, live_server, tmp_path):
    from playwright.sync_api import expect
    from sentence_transformers import SentenceTransformer

    url, store, live = live_server
    pg = page
    expect.set_options(timeout=30_000)

    # -- Runs: a shared link opens the run it names; the detail follows the run without a reload ------------
    pg.goto(f"{url}/runs?run={live}")
    expect(pg.get_by_role("heading", name=f"🏃 {LIVE_NAME}")).to_be_visible(timeout=90_000)
    store.update_status(live, progress=Progress(phase="caching frozen layers", phase_done=3, phase_total=10))
    expect(pg.get_by_text("caching frozen layers: 3 of 10 sentences")).to_be_visible()
    store.update_status(live, progress=Progress(step=6, total_steps=20, eta_seconds=14.0))
    expect(pg.get_by_text(re.compile(r"^step 6 of 20 · about 14\.0 s left"))).to_be_visible()
    pg.reload()
    expect(pg.get_by_role("heading", name=f"🏃 {LIVE_NAME}")).to_be_visible(timeout=90_000)
    assert f"run={live}" in pg.url

    # -- Runs: the picker writes the URL; a completed run's model downloads and loads in sentence-transformers --
    done = sorted(i for i in store.run_ids() if store.state(i) == RunState.COMPLETED)[0]
    name = store.read_config(done).name
    pg.get_by_role("combobox", name="Run details").click()
    pg.get_by_role("option", name=re.compile(re.escape(done))).click()
    expect(pg.get_by_role("heading", name=f"✅ {name}")).to_be_visible()
    expect(pg).to_have_url(re.compile(rf"[?&]run={re.escape(done)}"))
    archive = zipfile.ZipFile(io.BytesIO(download_bytes(pg, "Download model (.zip)")))
    archive.extractall(tmp_path / "download")
    (folder,) = (tmp_path / "download").iterdir()
    texts = ["the central bank raised interest rates", "a warm and funny film"]
    model, tokenizer, meta = load_model(store.checkpoint_dir(done))
    enc = tokenizer(texts, truncation=True, max_length=meta["max_length"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model.embed(enc["input_ids"], enc["attention_mask"])
    got = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(got.cpu(), want, atol=1e-4)

    # -- Compare: opens on the decision view, follows the live run, keeps its tab in the URL ---------------
    pg.goto(f"{url}/compare?sweep=(all runs)")  # the live run belongs to no sweep
    expect(pg.get_by_role("heading", name="Compare runs")).to_be_visible(timeout=90_000)
    expect(pg.get_by_role("combobox", name="Runs (5 match)")).to_be_visible()
    expect(pg.get_by_role("tab", name="Decision")).to_have_attribute("aria-selected", "true")
    expect(pg.get_by_text(re.compile("^Wall time: the whole run"))).to_be_visible()
    expect(pg.get_by_text(re.compile(rf"{LIVE_NAME}: step 6 of 20"))).to_be_visible()
    store.update_status(live, progress=Progress(step=9, total_steps=20, eta_seconds=11.0))
    expect(pg.get_by_text(re.compile(rf"{LIVE_NAME}: step 9 of 20"))).to_be_visible()
    pg.locator(".js-plotly-plot").nth(1).wait_for()
    screenshot(pg, "compare")  # the README's: the decision view over 2 strategies x 2 seeds
    pg.get_by_role("tab", name="Results").click()
    expect(pg.get_by_role("tab", name="Results")).to_have_attribute("aria-selected", "true")
    expect(pg).to_have_url(re.compile(r"[?&]tab=Results"))
    pg.reload()
    expect(pg.get_by_role("tab", name="Results")).to_have_attribute("aria-selected", "true", timeout=90_000)

    # -- Launch: the form survives a visit to another page -----------------------------------------------
    pg.get_by_role("link", name="Launch").click()
    run_name = pg.get_by_role("textbox", name="Run name (optional)")
    pg.get_by_text("Training settings").click()
    run_name.fill("kept across pages")
    run_name.press("Enter")
    pg.wait_for_timeout(3000)  # the rerun that commits the value settles before we leave
    pg.get_by_role("link", name="Runs").click()
    expect(pg.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    pg.get_by_role("link", name="Launch").click()
    pg.get_by_text("Training settings").click()
    expect(pg.get_by_role("textbox", name="Run name (optional)")).to_have_value("kept across pages")


def test_findings_page_reads_a_finished_study_in_a_real_browser(page, tmp_path, tmp_path_factory):
    """A study whose 2 cells x 3 seeds really trained (tests/test_findings_page.py), opened by a shared link."""
    from playwright.sync_api import expect

    from core import studies
    from core.findings import analyse
    from tests.test_findings_page import STUDY_NAME, finished_study_once

    finished = finished_study_once(tmp_path_factory)
    short = Path(tempfile.mkdtemp(prefix="freezelab-"))
    store = RunStore(short / "runs")
    shutil.copytree(finished["root"], store.root, ignore=shutil.ignore_patterns("checkpoint"))
    study = studies.load_study(store, finished["study_id"])
    findings = analyse(store, study)
    design = findings.designs["custom"]
    verdicts = [c for c in design.comparisons if not c.derived]
    assert verdicts and design.recommendations
    pg = page
    try:
        with serve(store, tmp_path / "streamlit.log") as url:
            pg.goto(f"{url}/findings?study={study.id}")
            expect(pg.get_by_role("heading", name="Findings", exact=True)).to_be_visible()
            expect(pg.get_by_role("heading", name=STUDY_NAME)).to_be_visible()
            expect(pg.get_by_text("6 of 6 runs completed", exact=True)).to_be_visible()
            for c in verdicts:  # each verdict sentence, with its numbers and interval, exactly once
                sentence = pg.get_by_text(c.sentence)
                expect(sentence).to_have_count(1)
                expect(sentence).to_be_visible()
            for rec in design.recommendations:
                expect(pg.get_by_text(rec.sentence)).to_be_visible()
            plot = pg.locator(".js-plotly-plot")
            expect(plot).to_have_count(1)
            expect(plot).to_be_visible()
            expect(plot.locator("g.point path").first).to_be_attached()  # drawn bars, not an empty chart
            expect(plot.get_by_text("topic test accuracy", exact=True)).to_be_visible()  # a panel's title
            with pg.expect_download(timeout=90_000) as download:  # the report is written on this click
                pg.get_by_role("button", name="Download the report (markdown + charts)").click()
            archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
            report = archive.read(f"{study.id}/report.md").decode()
            assert all(c.sentence in report for c in verdicts)
            assert f"{study.id}/custom.png" in archive.namelist()
            assert not store.study_report_dir(study.id).exists(), "the page writes no report into the runs folder"
            screenshot(pg, "findings", readme=False)
    finally:
        shutil.rmtree(short, ignore_errors=True)
