"""The UIs in a real browser (Debian's chromium driven by Playwright): run `pipeline` from the
Prefect UI's Custom run form, as a user does, then find what it produced in the MLflow UI.

`make test` installs chromium (apt) and Playwright (pip) first; where no chromium can be
installed the test skips and says why. Screenshots go to test-artifacts/browser/ (or
$MARBLE_TEST_ARTIFACTS/browser/). The browser may only reach 127.0.0.1: every other host
fails to resolve and every other request is aborted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tasks.runtime.services import ROOT
from tasks.store.tracking import ui_page
from tests.service_helpers import started

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]  # fmt: skip
SHOTS = Path(os.environ.get("MARBLE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
UI_TIMEOUT_MS = 60_000


def _label_xpath(label: str) -> str:
    """A form property whose own label (not a nested one) starts with `label`."""
    return (
        "xpath=.//div[contains(@class,'schema-form-property')]"
        "[./div[contains(@class,'p-label__header')]//span[contains(@class,"
        f"'schema-form-property__label') and starts-with(normalize-space(.), '{label} (')]]"
    )


def _field(page, section: str, label: str):
    """The input of field `label` inside the form section `section` (labels repeat across
    sections, e.g. Seed, and are not tied to their inputs)."""
    block = page.locator(_label_xpath(section)).first
    return block.locator(_label_xpath(label)).first.locator("input").first


def _dismiss(page, section: str, label: str, value: str) -> None:
    """Take `value` out of the multi-select `label` in form section `section` (its tag's x)."""
    field = page.locator(_label_xpath(section)).first.locator(_label_xpath(label)).first
    tag = field.locator(".p-tag", has_text=re.compile(f"^{re.escape(value)}$"))
    tag.locator(".p-tag__dismiss").click()


def _wait_for_final_state(url: str, timeout_s: float = 600) -> dict:
    """The flow run, read from the API until its state is final."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url) as response:
            run = json.load(response)
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"{url} did not finish in {timeout_s} s")


def _submit(page, attempts: int = 3) -> None:
    """Click Submit until the flow run is created. A 503 is Prefect's "retry": its server
    answers so when SQLite's write lock is held by another writer (its own client retries;
    its UI shows a toast and a user clicks again). Any other answer is final."""
    for _ in range(attempts):
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")
        ) as created:
            page.get_by_role("button", name="Submit").click()
        if created.value.status != 503:
            assert created.value.ok, (
                f"create_flow_run: {created.value.status} {created.value.text()}"
            )
            return
        time.sleep(1)
    raise AssertionError(f"create_flow_run answered 503 (SQLite locked) {attempts} times")


def _log_errors(log: Path, keep: int = 20) -> list[str]:
    """The error lines of a service's log (its last `keep`)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if "error" in line.lower() or "locked" in line][-keep:]


@pytest.fixture
def browser_page(monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "no chromium to drive: `apt-get install -y --no-install-recommends chromium` "
            "(make test tries it) failed or is not allowed on this machine"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Playwright keeps its browser profile in TMPDIR and chromium its singleton socket, whose
    # path must fit a unix socket's 108 bytes: a short folder of its own, not tmp_path.
    with tempfile.TemporaryDirectory(prefix="pw-", dir="/tmp") as short:
        monkeypatch.setenv("TMPDIR", short)
        yield from _launched_page(sync_api)


def _launched_page(sync_api):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        local = ("http://127.0.0.1", "data:", "blob:")
        trouble: list[str] = []  # what went wrong on the wire, for the failure messages

        def only_loopback(route):
            if route.request.url.startswith(local):
                route.continue_()
            else:
                trouble.append(f"aborted, not loopback: {route.request.url}")
                route.abort()

        context.route("**/*", only_loopback)
        page = context.new_page()
        page.on(
            "requestfailed", lambda r: trouble.append(f"failed: {r.method} {r.url} {r.failure}")
        )
        page.on(
            "response",
            lambda r: r.status >= 400 and trouble.append(f"{r.status}: {r.request.method} {r.url}"),
        )
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield page, trouble
        finally:
            browser.close()


def test_run_pipeline_from_the_prefect_form_and_read_it_in_mlflow(
    ui_stack, ui_shapes_port, browser_page
):
    """On the session's `marble up` (conftest.py), which test_deployments.py takes down."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page, trouble = browser_page
    home, _, up = ui_stack
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    state, _ = started(home)
    base = state["prefect_url"]
    with urllib.request.urlopen(f"{base}/api/deployments/name/pipeline/pipeline") as r:
        deployment = json.load(r)

    # the deployment page -> Run -> Custom run
    page.goto(f"{base}/deployments/deployment/{deployment['id']}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").first.click()
    page.wait_for_url(re.compile(r".*/run(\?.*)?$"))
    page.locator(".schema-form-property__label").first.wait_for()

    # a value below a pydantic bound (num_samples >= 2) is refused by the form
    _field(page, "Evaluation", "Num Samples").fill("1")
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("1 is less than the minimum of 2").first.wait_for()
    assert re.search(r"/run(\?.*)?$", page.url)  # still on the form: nothing was run
    page.screenshot(path=SHOTS / "prefect-form-refuses-out-of-bounds.png", full_page=True)

    # small parameters, typed into the form
    small = {
        ("Shapes", "N"): "200",
        ("Shapes", "Port"): str(ui_shapes_port),
        ("Training", "Autoencoder Steps"): "3",
        ("Training", "Image Tower Steps"): "3",
        ("Training", "Clip Steps"): "3",
        ("Training", "Diffusion Steps"): "3",
        ("Evaluation", "Num Samples"): "6",
        ("Evaluation", "Bootstrap"): "5",
    }
    for (section, label), value in small.items():
        _field(page, section, label).fill(value)
    _dismiss(page, "Training", "Text Encoders", "clip-small")  # a 1 x 1 grid
    _dismiss(page, "Training", "Unets", "unet-s")
    page.screenshot(path=SHOTS / "prefect-custom-run-form.png", full_page=True)
    try:
        _submit(page)
        page.get_by_text("scheduled to start").last.wait_for()  # the toast of the new run
    except (PlaywrightTimeoutError, AssertionError) as failed:
        page.screenshot(path=SHOTS / "prefect-submit-failed.png", full_page=True)
        said = page.locator(".p-toast__message").all_inner_texts()
        raise AssertionError(
            f"Submit created no run ({failed}); the UI said: {said}; on the wire: "
            f"{trouble}; the server's log: "
            f"{_log_errors(home / 'logs' / 'prefect-server.log')}"
        ) from None
    page.get_by_text("View run").last.click()
    page.wait_for_url(re.compile(r".*/flow-run/[0-9a-f-]+$"))
    run_id = page.url.rstrip("/").split("/")[-1]
    run = _wait_for_final_state(f"{base}/api/flow_runs/{run_id}")
    page.reload()  # the page shows the final state (without waiting on its live refresh)
    badge = page.locator(".page-heading .state-badge").first
    badge.filter(has_text=run["state_name"]).wait_for()
    page.screenshot(path=SHOTS / "prefect-run-completed.png", full_page=True)
    assert run["state_type"] == "COMPLETED", run["state"].get("message")
    assert "Completed" in badge.inner_text()
    params = run["parameters"]["params"]  # the form's values reached the run
    assert params["shapes"]["n"] == 200 and params["evaluation"]["num_samples"] == 6
    training = params["training"]
    assert training["text_encoders"] == ["clip-tiny"] and training["unets"] == ["unet-xs"]

    # MLflow: the first point of the sweep it produced, its metrics and sample grid
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("marble-evaluate")
    points = [
        r for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow.parentRunId")
    ]  # fmt: skip
    point = points[0]
    mlflow_url = state["mlflow_url"]
    # marble's link to the experiment opens its runs table, the sweep's run among them,
    # not MLflow's GenAI view (traces), where the UI opens any experiment by default
    sweep = client.get_run(point.data.tags["mlflow.parentRunId"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    page.goto(ui_page(mlflow_url, experiment_id=experiment.experiment_id))
    page.get_by_text(sweep.info.run_name).first.wait_for()
    assert "/runs" in page.url and "genai" not in page.url, page.url
    page.screenshot(path=SHOTS / "mlflow-experiment-runs.png", full_page=True)
    page.goto(f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs/{point.info.run_id}")
    page.get_by_text(point.info.run_name).first.wait_for()
    page.get_by_role("tab", name="Model metrics").click()
    page.locator(".js-plotly-plot").first.wait_for()
    page.screenshot(path=SHOTS / "mlflow-metrics.png", full_page=True)
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("samples.png").first.click()
    image = page.locator("img[src^='blob:']").first  # the artifact, fetched by the UI
    image.wait_for()
    assert image.evaluate("e => e.complete && e.naturalWidth > 0")
    page.screenshot(path=SHOTS / "mlflow-sample-grid.png", full_page=True)
