"""The workbench in a real browser: JupyterLab on 127.0.0.1 with a token, Debian's chromium driven
by Playwright. Opens notebooks/00_workbench.ipynb, runs it, clicks Run, waits for 3 rounds of points
in the chart's DOM, clicks Stop and checks that the chart ends on the round the status reports
and no more points arrive; then that the stopped run shows as a command line, and that Continue
goes on from there (until Stop again). Measures the time from the Run click to the first point and from Stop
to 'stopped', and saves a screenshot (FEDLAB_ARTIFACTS=DIR keeps them). The same with Voila
serving the notebook as an app, when voila is installed. Every wait is on a condition, with
timeouts generous enough for a loaded 2-core machine."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import NOTEBOOKS, ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TOKEN = "fedlab-browser-test"
# the last round drawn in the live accuracy trace (long histories are thinned, so not the length)
LIVE_CHART = ".fedlab-live-chart .js-plotly-plot"
LAST_ROUND = f"(() => {{ const p = document.querySelector('{LIVE_CHART}'); " \
             "const x = p && p.data && p.data.length ? p.data[0].x : []; return x.length ? x[x.length - 1] : 0; })()"
# the status line once a run has ended by Stop: [round N, of rounds] from "stopped: round N of R ...", else null
STOPPED = "(() => { for (const e of document.querySelectorAll('.widget-html-content')) { " \
          "const m = /^\\s*stopped: round (\\d+) of (\\d+)/.exec(e.textContent); " \
          "if (m) return [+m[1], +m[2]]; } return null; })()"


def _requirements(server_module: str, install: str):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    for module, why in (("playwright.sync_api", "pip install playwright (never `playwright install`)"),
                        (server_module, install)):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed: {why}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path, args: list[str], port: int, extra_env: dict):
    """Start a server on a copy of the notebook (the browser autosaves outputs); yield; stop it.
    The server gets its own empty HOME, so no user state (Jupyter settings, runtime files, the
    compilation cache) leaks in: on this machine a user HOME used by earlier sessions made the
    Voila kernel's warm-up never report ready, which a fresh HOME does not."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FEDLAB_SMOKE": "0", "HOME": str(tmp_path / "home"), **extra_env}
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path / "nb")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"{args[0]} exited: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _copy_notebook(tmp_path):
    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(NOTEBOOKS / "00_workbench.ipynb", work)


@pytest.fixture
def lab(tmp_path):
    """JupyterLab with a token, news and update checks off."""
    _requirements("jupyterlab", "pip install jupyterlab")
    _copy_notebook(tmp_path)
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    for _ in _serve(tmp_path, ["jupyter", "lab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                               "--port", str(port), f"--ServerApp.token={TOKEN}",
                               f"--ServerApp.root_dir={tmp_path / 'nb'}"],
                    port, {"JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings")}):
        yield f"http://127.0.0.1:{port}/lab/tree/00_workbench.ipynb?token={TOKEN}"


# the Data tab's heatmap: clients drawn, and the label skew it shows (the mean over clients of the
# total-variation distance of a client's label mix from the overall mix: 0 = IID)
HEATMAP = "(() => { const p = document.querySelector('.fedlab-data-view .js-plotly-plot'); " \
          "if (!p || !p.data || !p.data.length || p.data[0].type !== 'heatmap') return null; " \
          "const n = p.data[0].customdata, sums = n[0].map((_, j) => n.reduce((a, r) => a + r[j], 0)); " \
          "const total = sums.reduce((a, b) => a + b, 0), mix = sums.map(v => v / total); " \
          "const tv = n.map(r => { const s = r.reduce((a, b) => a + b, 0); " \
          "return 0.5 * r.reduce((a, v, j) => a + Math.abs(v / s - mix[j]), 0); }); " \
          "return {clients: n.length, skew: tv.reduce((a, b) => a + b, 0) / n.length}; })()"


def _labelled(page, kind: str, label: str):
    """The input (or select) of the widget of class ``kind`` whose label reads ``label``."""
    return page.locator(f".{kind}", has=page.locator("label", has_text=label)).first


def _partition_follows_alpha(page) -> dict:
    """The Data tab draws the partition before any training, and redraws it as alpha changes."""
    timings = {}
    start = time.perf_counter()
    page.wait_for_function(f"{HEATMAP} && {HEATMAP}.clients === 30", timeout=300_000, polling=100)   # natural
    timings["heatmap_shown_s"] = round(time.perf_counter() - start, 2)
    _labelled(page, "widget-dropdown", "partition").locator("select").select_option("dirichlet")
    page.wait_for_function(f"{HEATMAP} && {HEATMAP}.clients === 10", timeout=180_000, polling=100)
    readout = _labelled(page, "widget-hslider", "alpha").locator(".widget-readout")
    for alpha, condition in (("0.01", "> 0.6"), ("100", "< 0.15")):       # measured: 0.72 and 0.04
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(alpha)
        page.keyboard.press("Enter")
        start = time.perf_counter()
        page.wait_for_function(f"{HEATMAP} && {HEATMAP}.clients === 10 && {HEATMAP}.skew {condition}",
                               timeout=180_000, polling=100)
        timings[f"alpha_{alpha}_redrawn_s"] = round(time.perf_counter() - start, 2)
    _labelled(page, "widget-dropdown", "partition").locator("select").select_option("default")
    page.wait_for_function(f"{HEATMAP} && {HEATMAP}.clients === 30", timeout=180_000, polling=100)
    return timings


def _csv_download(page, tmp_path) -> dict:
    """The runs table arrives as a real browser download, named with a timestamp."""
    import re

    link = page.locator("a.fedlab-download", has_text=".csv").first
    link.wait_for(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        link.click()
    download = info.value
    assert re.fullmatch(r"fedlab-runs-\d{8}-\d{6}\.csv", download.suggested_filename), download.suggested_filename
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    text = target.read_text()
    assert text.splitlines()[0].startswith(",algorithm,") and "stopped" in text, text[:300]
    return {"csv_download": download.suggested_filename}


def _epsilon_does_not_block(page) -> dict:
    """With a target epsilon the noise is calibrated in the background: a change of another
    control made meanwhile reaches the kernel (the command line follows it), and the Privacy tab
    ends on the calibrated epsilon. The page records when each happened."""
    from playwright.sync_api import expect

    # the code view shows the controls (not the last run), so the command line follows every change
    _labelled(page, "widget-dropdown", "run:").locator("select").select_option(label="the controls (next run)")
    expect(page.locator(".widget-textarea textarea").nth(1)).to_have_value("python -m fedlab run --rounds 100000",
                                                                           timeout=30_000)
    page.locator(".lm-TabBar-tab", has_text="Privacy").first.click()
    expect(page.locator(".fedlab-dp-info").first).to_contain_text("no privacy guarantee", timeout=30_000)
    page.evaluate("""() => { window.__seen = {}; const t0 = performance.now();
        window.__watch = setInterval(() => {
          const info = document.querySelector('.fedlab-dp-info'), text = info ? info.textContent : '';
          if (text.includes('computing epsilon') && !window.__seen.computing) window.__seen.computing = performance.now() - t0;
          if (text.includes('ε =') && !window.__seen.computed) window.__seen.computed = performance.now() - t0;
          const cmd = document.querySelectorAll('.widget-textarea textarea')[1];
          if (cmd && cmd.value.includes('--batch-size 16') && !window.__seen.handled) window.__seen.handled = performance.now() - t0;
        }, 10); }""")
    page.locator(".widget-toggle-button", has_text="target epsilon").first.click()
    page.locator(".lm-TabBar-tab", has_text="Training").first.click()
    batch = _labelled(page, "widget-inline-hbox", "batch size").locator("input")
    batch.fill("16")
    batch.press("Enter")
    # Both arrive, in whichever order: the calibration takes well under a second here, so whether
    # the change lands before it ends (or the page ever paints "computing epsilon...") is a race
    # on a busy machine. That the calibration runs off the kernel's main thread is proven with a
    # slowed calibration in tests/test_ui.py.
    seen = page.wait_for_function("window.__seen.handled && window.__seen.computed && window.__seen",
                                  timeout=300_000, polling=50).json_value()
    page.evaluate("clearInterval(window.__watch)")
    page.locator(".lm-TabBar-tab", has_text="Privacy").first.click()
    expect(page.locator(".fedlab-dp-info").first).to_contain_text("ε =", timeout=10_000)
    return {"epsilon_computed_after_s": round(seen["computed"] / 1000, 2),
            "epsilon_computing_shown": "computing" in seen,
            "other_control_handled_after_s": round(seen["handled"] / 1000, 2)}


CLIENT_CURVE = "(() => { const p = document.querySelector('.fedlab-client-curves .js-plotly-plot'); " \
               "if (!p || !p.data || !p.data.length) return null; const a = (p.layout.annotations || [])[0]; " \
               "return {traces: p.data.map(t => t.name), points: (p.data[0].x || []).length, " \
               "title: a ? a.text : ''}; })()"
QUALITY = "(() => { const p = document.querySelector('.fedlab-quality-view .js-plotly-plot'); " \
          "return p && p.data && p.data.length && p.data[0].type === 'heatmap' ? p.data[0].y.length : null; })()"


def _new_panels(page) -> dict:
    """The per-client view follows the client chosen, the Data tab holds the data-quality heatmap, and
    the Islands button runs the islands baseline as a run of its own (stopped after its first rounds).
    Screenshots go to FEDLAB_ARTIFACTS when it is set. Ends on the Privacy tab, where it started."""
    from playwright.sync_api import expect

    artifacts = pathlib.Path(os.environ.get("FEDLAB_ARTIFACTS", "")) if os.environ.get("FEDLAB_ARTIFACTS") else None
    tag = "jupyterlab" if "/lab/" in page.url else "voila"

    curve = page.wait_for_function(f"{CLIENT_CURVE} && {CLIENT_CURVE}.points >= 1 && {CLIENT_CURVE}",
                                   timeout=120_000, polling=100).json_value()
    assert "global model" in curve["traces"], curve
    chooser = page.locator(".fedlab-client-curves select").first
    options = chooser.locator("option").all_inner_texts()
    other = next(o for o in options if f"client {o} over" not in curve["title"])
    chooser.select_option(label=other)
    page.wait_for_function(f"{CLIENT_CURVE} && {CLIENT_CURVE}.title.startsWith('client {other} over')",
                           timeout=60_000, polling=100)
    page.locator(".lm-TabBar-tab", has_text="Data").first.click()
    quality_rows = page.wait_for_function(QUALITY, timeout=180_000, polling=100).json_value()
    if artifacts is not None:
        page.locator(".fedlab-quality-view").first.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / f"workbench_{tag}_quality.png"), full_page=False)
    page.locator("button.jupyter-button", has_text="Islands").first.click()
    page.wait_for_function("[...document.querySelectorAll('.widget-html-content')].some(e => "
                           "/^\\s*round \\d+ of 100000/.test(e.textContent))", timeout=180_000, polling=50)
    page.locator("button.jupyter-button", has_text="Stop").first.click()
    expect(page.locator(".fedlab-runs-table").first).to_contain_text("islands (local)", timeout=120_000)
    expect(page.locator("button.jupyter-button", has_text="Islands").first).to_be_enabled(timeout=120_000)
    if artifacts is not None:
        page.screenshot(path=str(artifacts / f"workbench_{tag}_clients.png"), full_page=True)
    page.locator(".lm-TabBar-tab", has_text="Privacy").first.click()
    return {"clients_in_chooser": len(options), "quality_heatmap_clients": quality_rows}


def _drive(page, artifacts: pathlib.Path, tag: str) -> dict:
    """On a page showing the workbench: set 100000 rounds, Run, wait for 3 rounds, Stop, check."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect

    run_button = page.locator("button.jupyter-button", has_text="Run").filter(has_not_text="Reset").first
    run_button.wait_for(timeout=180_000)
    page.locator(LIVE_CHART).first.wait_for(timeout=60_000)
    partition = _partition_follows_alpha(page)
    page.locator(".lm-TabBar-tab", has_text="Training").first.click()
    rounds = page.locator(".widget-inline-hbox", has=page.locator("label", has_text="rounds")).locator("input").first
    rounds.fill("100000")
    rounds.press("Enter")
    expect(rounds).to_have_value("100000")    # sent on Enter, ahead of the Run click (checked below)
    page.get_by_text("ready", exact=True).first.wait_for(timeout=300_000)   # background warm-up done
    assert page.evaluate(LAST_ROUND) == 0, "the chart should start empty"

    clicked = time.perf_counter()
    run_button.click()
    page.wait_for_function(f"{LAST_ROUND} >= 1", timeout=180_000, polling=20)
    first_point = time.perf_counter() - clicked
    page.wait_for_function(f"{LAST_ROUND} >= 3", timeout=120_000, polling=20)
    page.locator("button.jupyter-button", has_text="Stop").first.click()
    stopped_at = time.perf_counter()
    stopped, of = page.wait_for_function(STOPPED, timeout=120_000, polling=20).json_value()
    stop_seconds = time.perf_counter() - stopped_at
    assert of == 100000 and 3 <= stopped < 100000, f"status: stopped at round {stopped} of {of}"
    # the workbench redraws the chart before it says 'stopped'; the browser may draw it a moment later
    try:
        page.wait_for_function(f"{LAST_ROUND} === {stopped}", timeout=60_000, polling=50)
    except PlaywrightTimeout:
        pytest.fail(f"the chart ends at round {page.evaluate(LAST_ROUND)}, the status says {stopped}")
    expect(run_button).to_be_enabled(timeout=60_000)           # the run is over in the kernel too
    try:        # nothing may arrive after that: watch the chart for a second more
        page.wait_for_function(f"{LAST_ROUND} !== {stopped}", timeout=1000, polling=20)
    except PlaywrightTimeout:
        pass
    later = page.evaluate(LAST_ROUND)
    assert later == stopped, f"rounds kept arriving after Stop: {stopped} -> {later}"
    # the stopped run as a command line, and Continue: it goes on from round `stopped` (then Stop again)
    expect(page.locator(".widget-textarea textarea").nth(1)).to_have_value("python -m fedlab run --rounds 100000", timeout=30_000)
    continue_button = page.locator("button.jupyter-button", has_text="Continue").first
    expect(continue_button).to_be_enabled(timeout=30_000)
    continue_button.click()
    page.wait_for_function(f"{LAST_ROUND} >= {stopped + 2}", timeout=120_000, polling=20)
    page.locator("button.jupyter-button", has_text="Stop").first.click()
    again, _ = page.wait_for_function(f"(() => {{ const s = {STOPPED}; return s && s[0] > {stopped} ? s : null; }})()",
                                      timeout=120_000, polling=20).json_value()
    page.wait_for_function(f"{LAST_ROUND} === {again}", timeout=60_000, polling=50)
    first_x = page.evaluate(f"document.querySelector('{LIVE_CHART}').data[0].x[0]")
    assert first_x == 1, f"the continued run's chart starts at round {first_x}, not 1"
    page.screenshot(path=str(artifacts / f"workbench_{tag}.png"), full_page=True)
    download = _csv_download(page, artifacts)
    privacy = _epsilon_does_not_block(page)
    privacy.update(_new_panels(page))
    page.screenshot(path=str(artifacts / f"workbench_{tag}_privacy.png"), full_page=False)
    result = {"click_to_first_point_s": round(first_point, 2), "stop_to_stopped_s": round(stop_seconds, 2),
              "rounds_when_stopped": stopped, "last_round_drawn_at_the_end": later,
              "rounds_when_stopped_after_continue": again, **partition, **download, **privacy}
    (artifacts / f"workbench_{tag}.json").write_text(json.dumps(result))
    print(f"\n{tag}: {json.dumps(result)}; screenshot {artifacts / f'workbench_{tag}.png'}")
    return result


def _drive_or_explain(page, tmp_path, tag: str) -> dict:
    """``_drive``; when a wait times out, fail with what the page and the server showed then
    (the workbench's status lines, a screenshot, the server log's tail) instead of a bare timeout."""
    from playwright.sync_api import Error as PlaywrightError

    artifacts = _artifacts(tmp_path)
    try:
        return _drive(page, artifacts, tag)
    except PlaywrightError as err:
        page.screenshot(path=str(artifacts / f"workbench_{tag}_failed.png"), full_page=True)
        texts = page.evaluate("[...document.querySelectorAll('.widget-html-content')]"
                              ".map(e => e.textContent.trim()).filter(t => t).slice(0, 12)")
        log = (tmp_path / "server.log").read_text()[-3000:]
        pytest.fail(f"{err.message.splitlines()[0]}\nthe page's status lines: {texts}\nlast round drawn: "
                    f"{page.evaluate(LAST_ROUND)}\nscreenshot: {artifacts / f'workbench_{tag}_failed.png'}\n"
                    f"server log (tail):\n{log}")


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)


def _artifacts(tmp_path) -> pathlib.Path:
    artifacts = pathlib.Path(os.environ.get("FEDLAB_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def test_workbench_runs_live_and_stops_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
        try:
            page.goto(lab)
            # Run All before the kernel is ready is silently dropped: wait for it to be idle
            page.get_by_text("| Idle").first.wait_for(timeout=120_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=False).first.click()
            page.locator("button.jupyter-button", has_text="Stop").first.wait_for(timeout=180_000)
            page.get_by_text("| Idle").first.wait_for(timeout=120_000)    # every cell has run
            _drive_or_explain(page, tmp_path, "jupyterlab")
        finally:
            browser.close()


@pytest.fixture
def voila(tmp_path):
    """Voila serving the notebook as an app (code hidden); training starts only from the button."""
    _requirements("voila", "pip install voila")
    _copy_notebook(tmp_path)
    port = _free_port()
    for _ in _serve(tmp_path, ["voila", "00_workbench.ipynb", "--no-browser", "--Voila.ip=127.0.0.1",
                               f"--port={port}", f"--token={TOKEN}"], port, {}):
        yield f"http://127.0.0.1:{port}/?token={TOKEN}"


def test_workbench_runs_live_and_stops_in_voila(voila, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
        try:
            page.goto(voila, timeout=180_000)
            _drive_or_explain(page, tmp_path, "voila")
            # app mode: the notebook's prose around the workbench is hidden
            assert not page.get_by_text("Everything the buttons do is also a method").first.is_visible()
        finally:
            browser.close()
