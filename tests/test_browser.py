"""The dashboard in a real Chromium: launch a run, watch it complete, compare it, try sentences on it.

Runs `streamlit run app.py` as a real server on a fresh runs folder and drives Debian's chromium
through Playwright (no browser download: CI installs the `chromium` package). Screenshots of each
page go to screenshots/; with FREEZELAB_UPDATE_SCREENSHOTS=1 they are also copied to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from core.store import RunStore
from tests.conftest import ROOT
from tests.dashboard_fixtures import free_port, kill_everything_for, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
RUN_NAME = "browser run"
SENTENCES = ["Shares tumbled after the central bank raised interest rates.", "A dull, lifeless and badly acted film."]
TRAIN_TIMEOUT = 420  # seconds for the launched run to complete (a few dozen on an idle 2-core machine)


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except OSError:
        return False


@pytest.fixture
def server(tmp_path):
    """A real `streamlit run app.py` on a free port, serving a fresh runs folder; everything it started dies after."""
    short = Path(tempfile.mkdtemp(prefix="freezelab-"))  # a short path: the sidebar shows it in the screenshots
    store = RunStore(short / "runs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FREEZELAB_RUNS_DIR": str(store.root), "FREEZELAB_CONCURRENCY": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.time() + 90
        while not _health(url):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not come up on {url} (exit code {proc.poll()}):\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url, store
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
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does); "
                    "this test never downloads a browser.")
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


def screenshot(pg, name: str) -> Path:
    """A full-page screenshot: Streamlit scrolls inside its main element, so grow the viewport to its height first."""
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
    if os.environ.get("FREEZELAB_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs / f"{name}.png")
    assert path.stat().st_size > 20_000, f"{path} looks blank"
    return path


def main_text(pg) -> str:
    return pg.get_by_role("main").inner_text()


def test_launch_train_compare_and_predict_in_a_real_browser(page, server):
    from playwright.sync_api import expect

    url, store = server
    pg = page

    # -- Launch: a cheap run (2-layer backbone, 40 examples per task, 32 tokens) -----------------------------
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
    assert store.exists(run_id) and store.read_status(run_id)["state"] in ("queued", "running", "completed")
    cfg = store.read_config(run_id)
    assert (cfg.backbone, cfg.name, cfg.max_length) == ("minilm-l6:2", RUN_NAME, 32)
    assert [t.max_train_examples for t in cfg.tasks] == [40, 40]
    pg.locator(".js-plotly-plot").first.wait_for()
    screenshot(pg, "launch")

    # -- Runs: the run appears, trains in the background and completes ------------------------------------
    pg.get_by_role("link", name="Runs").click()
    expect(pg.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(pg.get_by_role("heading", name=re.compile(rf"^(⏳|🏃|✅) {RUN_NAME}$"))).to_be_visible()
    done = pg.get_by_role("heading", name=f"✅ {RUN_NAME}")

    def completed() -> bool:
        state = store.read_status(run_id).get("state")
        if state in ("failed", "stopped"):
            pytest.fail(f"the launched run ended {state}: {store.read_status(run_id).get('error')}\n"
                        f"{store.read_log_tail(run_id, 30)}")
        if state != "completed":
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

    # -- Compare: the run's validation curves ---------------------------------------------------------------
    pg.get_by_role("link", name="Compare").click()
    expect(pg.get_by_role("heading", name="Compare runs")).to_be_visible()
    for tab in ("Curves", "Results", "Cost vs accuracy", "Config diff", "Per class"):
        expect(pg.get_by_role("tab", name=tab)).to_be_visible()
    plot = pg.locator(".js-plotly-plot").first
    expect(plot).to_be_visible()
    expect(plot.locator("path.js-line").first).to_be_attached()  # a drawn curve, not an empty chart
    expect(pg.get_by_text("topic: validation accuracy")).to_be_visible()
    expect(pg.get_by_text("sentiment: validation accuracy")).to_be_visible()
    screenshot(pg, "compare")

    # -- Playground: predictions of both tasks for typed sentences -------------------------------------------
    pg.get_by_role("link", name="Playground").click()
    expect(pg.get_by_role("heading", name="Playground")).to_be_visible()
    box = pg.get_by_role("textbox", name="Sentences, one a line")
    box.fill("\n".join(SENTENCES))
    box.press("Control+Enter")
    for sentence in SENTENCES:
        expect(pg.locator("blockquote").filter(has_text=sentence)).to_be_visible()
    expect(pg.get_by_text(re.compile(r"^2 sentence\(s\) in \d+ ms$"))).to_be_visible()
    expect(pg.locator(".js-plotly-plot")).to_have_count(4)  # a probability chart per sentence and task
    expect(pg.get_by_role("heading", name="Predict a whole file")).to_be_visible()
    labels = {task: set(t["label_names"]) for task, t in store.read_summary(run_id)["tasks"].items()}
    text = main_text(pg)
    predicted = {task: re.findall(rf"^{task}: (\S+)$", text, flags=re.M) for task in ("topic", "sentiment")}
    assert {task: len(found) for task, found in predicted.items()} == {"topic": 2, "sentiment": 2}, text
    for task, found in predicted.items():
        assert set(found) <= labels[task], (task, found, labels[task])
    screenshot(pg, "playground")
