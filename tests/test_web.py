"""The web page at `/`, in real headless Chromium (Debian's chromium + chromedriver, driven by
selenium) against a real `python -m service` serving the CNN and the tabular model.

What a person does, checked against what the API answers for the same input: explain an image
with activation and gradcam (both overlays load, the top label and the probabilities are the
API's), send a file that is no image (the page shows the API's own message), explain the tabular
form's row (the prediction, the base value and the sorted signed attributions are the API's), and
give the token when the server asks for one. The screenshots in docs/ come from here: each
test saves its page in its own temporary directory, and into docs/ only when
SCREENSHOTS_TO_DOCS=1 (`make screenshots`), so `make test` leaves the checkout as it was.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.servers.glimpse import Glimpse, glimpse

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[1] / "docs"
TO_DOCS = os.environ.get("SCREENSHOTS_TO_DOCS") == "1"
WIDTH, PHONE = 1280, 390
WAIT = 60  # seconds for the page to show an answer (explanations share 2 cores with the rest)
TOKEN = "web-page-test-token"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--window-size={WIDTH},1000",
)


def installed(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    return found


@pytest.fixture(scope="module")
def server(
    cnn_archive: Path, tabular_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Glimpse]:
    with glimpse([cnn_archive, tabular_archive], tmp_path_factory.mktemp("web")) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile; its console errors are kept for the checks."""
    options = webdriver.ChromeOptions()
    options.binary_location = installed("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(installed("chromedriver"), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def shown(driver: WebDriver, element_id: str) -> None:
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, element_id).is_displayed())


def choose_model(driver: WebDriver, name: str, ready: str) -> None:
    wait_for(driver, f'#model option[value="{name}"]')
    Select(driver.find_element(By.ID, "model")).select_by_value(name)
    wait_for(driver, ready)


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> None:
    """The whole page at WIDTH pixels wide, however long it is, saved as `name` in `tmp_path`,
    or in docs/ with SCREENSHOTS_TO_DOCS=1."""
    path = (DOCS if TO_DOCS else tmp_path) / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": WIDTH, "height": min(height, 4000), "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    with Image.open(path) as image:
        assert image.width == WIDTH


def fits_a_phone(driver: WebDriver) -> bool:
    """Whether the page, laid out PHONE pixels wide, needs no sideways scrolling."""
    metrics = {"width": PHONE, "height": 800, "deviceScaleFactor": 1, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        width = driver.execute_script("return document.documentElement.scrollWidth")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return bool(width <= PHONE)


def console_errors(driver: WebDriver) -> list[str]:
    """Console errors other than the failed requests the test causes on purpose (a 400)."""
    entries = driver.get_log("browser")
    return [
        e["message"]
        for e in entries
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def explain_image(server: Glimpse, image: bytes) -> dict[str, Any]:
    response = httpx.post(
        f"{server.http}/explanations/cnn?methods=activation,gradcam",
        content=image,
        headers={"content-type": "image/png"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_image_explanations_and_errors(
    server: Glimpse, browser: WebDriver, shapes_png: bytes, tmp_path: Path
) -> None:
    upload = tmp_path / "shape.png"
    Image.open(io.BytesIO(shapes_png)).resize((256, 188)).save(upload)
    expected = explain_image(server, upload.read_bytes())

    browser.get(f"{server.http}/")
    choose_model(browser, "cnn", '#methods input[value="gradcam"]')
    for method in ("activation", "gradcam"):
        box = browser.find_element(By.CSS_SELECTOR, f'#methods input[value="{method}"]')
        if not box.is_selected():
            box.click()
    browser.find_element(By.ID, "file").send_keys(str(upload))
    browser.find_element(By.ID, "explain").click()
    shown(browser, "image-results")
    loaded = """return [...document.querySelectorAll('#gallery img.overlay')].map(
        (img) => [img.alt, img.complete ? img.naturalWidth : 0])"""
    WebDriverWait(browser, WAIT).until(
        lambda d: (
            len(d.execute_script(loaded)) == 2 and all(w > 0 for _, w in d.execute_script(loaded))
        )
    )
    overlays = dict(browser.execute_script(loaded))
    assert overlays == {"activation overlay": 256, "gradcam overlay": 256}
    assert all(img.is_displayed() for img in browser.find_elements(By.CSS_SELECTOR, "img.overlay"))

    prediction = expected["prediction"]
    top = max(prediction, key=prediction.__getitem__)
    assert browser.find_element(By.ID, "top-label").text == top
    bars = browser.find_elements(By.CSS_SELECTOR, "#prediction li")
    shown_bars = {b.get_attribute("data-label"): float(b.get_attribute("data-value")) for b in bars}
    assert shown_bars == pytest.approx(prediction, abs=1e-6)
    stages = [
        r.get_attribute("data-stage")
        for r in browser.find_elements(By.CSS_SELECTOR, "#timings tr[data-stage]")
    ]
    assert set(stages) == set(expected["timings_ms"])

    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 30;"
        "s.dispatchEvent(new Event('input'));"
    )
    opacity = "return getComputedStyle(document.querySelector('img.overlay')).opacity"
    assert float(browser.execute_script(opacity)) == pytest.approx(0.3)
    browser.execute_script(
        "const s = document.getElementById('opacity'); s.value = 85;"
        "s.dispatchEvent(new Event('input'));"
    )
    screenshot(browser, "ui-image.png", tmp_path)
    assert fits_a_phone(browser)

    # A file that is no image: the page shows the API's own error for the same bytes.
    bad = tmp_path / "x.png"
    bad.write_bytes(b"this is text, not an image\n")
    refusal = httpx.post(
        f"{server.http}/explanations/cnn?methods=activation,gradcam",
        content=bad.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=WAIT,
    )
    assert refusal.status_code == 400
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "explain").click()
    shown(browser, "error")
    assert browser.find_element(By.ID, "error-message").text == refusal.json()["message"]
    assert browser.find_element(By.ID, "error-code").text == f"400 {refusal.json()['code']}"
    assert console_errors(browser) == []


def test_tabular_form_matches_the_api(server: Glimpse, browser: WebDriver, tmp_path: Path) -> None:
    browser.get(f"{server.http}/")
    choose_model(browser, "tabular", "#columns [name]")
    fields = browser.execute_script(
        "return [...document.querySelectorAll('#columns [name]')]"
        ".map((f) => [f.name, f.dataset.type, f.value])"
    )
    # The row the form sends as it stands: its default values, typed as the page types them.
    row = {
        name: float(value) if kind == "continuous" else value
        for name, kind, value in fields
        if value != ""
    }
    schema = httpx.get(f"{server.http}/models/tabular", timeout=WAIT).json()["input"]["columns"]
    assert {c["name"] for c in schema if c["required"]} <= set(row)
    response = httpx.post(f"{server.http}/explanations/tabular", json=row, timeout=WAIT)
    assert response.status_code == 200, response.text
    expected = response.json()["rows"][0]

    browser.find_element(By.ID, "explain-row").click()
    shown(browser, "tabular-results")
    wait_for(browser, "#attributions li")
    prediction = browser.find_element(By.ID, "tab-prediction").get_attribute("data-value")
    assert float(prediction) == pytest.approx(expected["prediction"], rel=1e-9)
    base = browser.find_element(By.ID, "tab-sum").get_attribute("data-base-value")
    assert float(base) == pytest.approx(expected["base_value"], rel=1e-9)
    assert "base value" in browser.find_element(By.ID, "tab-sum").text

    bars = browser.find_elements(By.CSS_SELECTOR, "#attributions li.attr")
    shown_values = [
        (b.get_attribute("data-column"), float(b.get_attribute("data-value"))) for b in bars
    ]
    attributions = expected["attributions"]["integrated_gradients"]
    assert dict(shown_values) == pytest.approx(attributions, rel=1e-9, abs=1e-12)
    magnitudes = [abs(v) for _, v in shown_values]
    assert magnitudes == sorted(magnitudes, reverse=True)
    for bar, (_, value) in zip(bars, shown_values, strict=True):
        fill = bar.find_element(By.CSS_SELECTOR, ".fill")
        assert ("negative" in fill.get_attribute("class")) == (value < 0)

    screenshot(browser, "ui-tabular.png", tmp_path)
    assert fits_a_phone(browser)
    assert console_errors(browser) == []


def test_token_field_appears_when_the_server_asks(
    cnn_archive: Path, browser: WebDriver, tmp_path: Path
) -> None:
    env = {**os.environ, "GLIMPSE_AUTH_TOKEN": TOKEN}
    with glimpse([cnn_archive], tmp_path / "server", env=env) as server:
        assert httpx.get(f"{server.http}/models", timeout=WAIT).status_code == 401
        browser.get(f"{server.http}/")  # the page itself loads without the token
        shown(browser, "token-panel")
        shown(browser, "error")
        assert "requires a token" in browser.find_element(By.ID, "error-message").text
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_for(browser, '#methods input[value="activation"]')
        assert not browser.find_element(By.ID, "token-panel").is_displayed()
        assert not browser.find_element(By.ID, "error").is_displayed()
        stored = browser.execute_script("return sessionStorage.getItem('glimpse.token')")
        assert stored == TOKEN
