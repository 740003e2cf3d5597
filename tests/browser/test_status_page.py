"""The status page in a real browser: Debian's headless Chromium driven through chromedriver (selenium),
against the daemon as a subprocess with three environments on the local target, one of them with a
RayCluster and a RayJob on real Ray. Screenshots are kept under build/test-artifacts/ (or
$RAY_GITOPS_TEST_ARTIFACTS).

Skipped, with the reason, where Chromium, chromedriver or selenium are missing; with
RAY_GITOPS_BROWSER_TEST=required (set by .ci/run, which installs them) it fails instead.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.model import job_submission_id
from tests.conftest import GitRemote, stop_local_clusters, write_neighbours
from tests.statuspage import StatusDaemon, ray_environment

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RAY_GITOPS_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900")
ENV = "train"


def _missing() -> str:
    """Why the browser test cannot run here ("" when it can)."""
    gone = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        gone.append("the selenium package (pip install -e '.[test]')")
    if not gone:
        return ""
    return (f"needs {', '.join(gone)}: apt-get install chromium chromium-driver (Debian's packages; .ci/run "
            "installs them)")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a new empty profile; it and its chromedriver are stopped by PID."""
    reason = _missing()
    if reason:
        if os.environ.get("RAY_GITOPS_BROWSER_TEST") == "required":
            pytest.fail(f"RAY_GITOPS_BROWSER_TEST=required, but the browser test {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "", log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    pids = [service.process.pid]
    try:
        yield driver
    finally:
        pids += _descendants(pids[0])
        driver.quit()
        for pid in pids:  # whatever quit left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait(driver: Any, what: str, check: Any, timeout: float = 30) -> Any:
    from selenium.webdriver.support.wait import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: check(d), message=what)


def _screenshot(driver: Any, name: str) -> Path:
    """The whole page as a PNG under ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(600, min(int(height) + 40, 4000)))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


def _cells(driver: Any) -> dict[str, dict[str, str]]:
    """The overview's visible rows: environment -> its cells' text (read at once: rows are redrawn live)."""
    rows = driver.execute_script("""
        return Array.from(document.querySelectorAll("#environments tbody tr")).filter((r) => !r.hidden)
          .map((r) => [r.dataset.environment, ...["target", "revision", "sync", "health"]
            .map((c) => r.querySelector("td." + c).innerText)]);""")
    return {name: dict(zip(("target", "revision", "sync", "health"), texts, strict=True)) for name, *texts in rows}


def _bar(driver: Any, cluster: str, group: str) -> dict[str, Any] | None:
    """A worker group's bar: its label and how much of it is filled (None while not drawn)."""
    return driver.execute_script("""
        const bar = document.querySelector(`[data-cluster="${arguments[0]}"] tr[data-group="${arguments[1]}"] .bar`);
        if (!bar) return null;
        return {label: bar.getAttribute("aria-label"),
                filled: bar.querySelector(".fill").getBoundingClientRect().width / bar.getBoundingClientRect().width};
        """, cluster, group)


def _text(driver: Any, selector: str) -> str | None:
    """The text of the first element matching `selector`, None when there is none."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                                 selector)


def test_the_page_lists_environments_updates_without_reload_and_shows_workers_and_runs(
        chrome: Any, remote: GitRemote, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    files = ray_environment(ENV)
    for path, text in files.items():
        remote.write(path, text)
    write_neighbours(remote, ("alpha", "beta"))
    beta = remote.work_path / "environments/beta/environment.yaml"
    remote.write("environments/beta/environment.yaml",
                 beta.read_text().replace("interval: 2s}", "interval: 2s, dependsOn: [{environment: alpha}]}"))
    first = remote.commit("a Ray environment and two others")
    state = tmp_path / "state"
    daemon = StatusDaemon(remote.url, state, tmp_path / "daemon.log", ["--interval", "1s"])
    base = f"http://127.0.0.1:{daemon.port}"
    try:
        daemon.wait_for("the job's run", lambda: daemon.environment(ENV) is not None and any(
            run["result"] == "succeeded" for run in daemon.api(f"/environments/{ENV}/runs")["items"]), 240)
        daemon.wait_for("three Synced environments, all Healthy", lambda: all(
            daemon.at(e, first) and (daemon.environment(e) or {}).get("health_status") == "Healthy"
            for e in (ENV, "alpha", "beta")), 60)

        chrome.get(base + "/")
        _wait(chrome, "three rows", lambda d: len(_cells(d)) == 3)
        cells = _cells(chrome)
        assert sorted(cells) == ["alpha", "beta", ENV]
        for row in cells.values():
            assert (row["target"], row["sync"], row["health"]) == ("local", "Synced", "Healthy"), row
            assert row["revision"].startswith(f"{first[:12]} a Ray environment and two others")

        steps = chrome.execute_script("""
            return Array.from(document.querySelectorAll("#promotions:not([hidden]) ol.chain li"))
              .map((li) => [li.dataset.environment, li.innerText]);""")
        assert [name for name, _ in steps] == ["alpha", "beta"], steps  # the promotion chain, in order
        assert "first" in steps[0][1] and "after alpha" in steps[1][1], steps
        assert all("Synced" in text and "Healthy" in text and first[:12] in text for _, text in steps), steps

        chrome.execute_script("window.sameDocument = 'the first load';")
        remote.write("environments/alpha/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     "metadata: {name: settings}\ndata: {owner: the-data-team}\n")
        second = remote.commit("alpha: the data team owns it")
        _wait(chrome, "alpha's new revision on the page",
              lambda d: _cells(d)["alpha"]["revision"].startswith(f"{second[:12]} alpha: the data team owns it"))
        assert chrome.execute_script("return window.sameDocument;") == "the first load"  # no reload
        chrome.find_element(By.ID, "filter").send_keys("BETA synced")
        _wait(chrome, "the filter to leave beta alone", lambda d: list(_cells(d)) == ["beta"])
        chrome.find_element(By.ID, "filter").clear()
        chrome.find_element(By.ID, "filter").send_keys(" ")  # an input event: every row again
        _wait(chrome, "every row again", lambda d: len(_cells(d)) == 3)
        print(f"screenshot: {_screenshot(chrome, 'status-page-overview.png')}")

        chrome.get(f"{base}/environments/{ENV}")
        bar = _wait(chrome, "the cpu group's bar", lambda d: _bar(d, "demo", "cpu"))
        assert bar["label"] == "1 of 1 desired workers ready; min 0, max 4"
        assert 0.2 < bar["filled"] < 0.3  # 1 ready worker on a 0..4 scale
        job = yaml.safe_load(files[f"environments/{ENV}/rayjob.yaml"])
        run = _wait(chrome, "the job's run", lambda d: _text(
            d, f"[data-job='count'] tr[data-submission='{job_submission_id(ENV, 'count', job)}']"))
        assert "SUCCEEDED" in run and "succeeded" in run
        _wait(chrome, "the plan", lambda d: (_text(d, "#plan-status") or "").startswith("No changes"))
        assert _text(chrome, f"#history tr[data-revision='{first}']")
        print(f"screenshot: {_screenshot(chrome, 'status-page-environment.png')}")

        assert _text(chrome, "[data-pending-restart]") is None
        remote.write(f"environments/{ENV}/raycluster.yaml",
                     files[f"environments/{ENV}/raycluster.yaml"].replace("memory: 1Gi", "memory: 2Gi"))
        third = remote.commit("demo: more memory per cpu worker")
        restart = _wait(chrome, "the cpu group's pending restart", lambda d: _text(
            d, "[data-cluster='demo'] [data-pending-restart='cpu']"), 60)
        assert "RayCluster demo: cpu still runs the old template (changed " in restart, restart
        _wait(chrome, "the header's new head", lambda d: f"head {third[:12]}" in (_text(d, "#source") or ""), 10)
        print(f"screenshot: {_screenshot(chrome, 'status-page-pending-restart.png')}")

        problems = [e for e in chrome.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == []  # no script error, no Content-Security-Policy violation

        chrome.get(f"{base}/environments/gone")  # an old link (its 404 is logged as an error: checked above)
        _wait(chrome, "the page of an environment that is not here", lambda d: "no environment 'gone'" in (
            _text(d, "#env-missing") or ""))
        _wait(chrome, "its header", lambda d: f"head {third[:12]}" in (_text(d, "#source") or ""), 10)
    finally:
        daemon.stop()
        stop_local_clusters(state)
