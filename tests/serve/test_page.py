"""The web page: attribute controls that write the prompt, and a real headless Chromium session."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from facesmith.serve.page import attributes_from_controls, prompt_from_controls

from .conftest import start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Set, the browser test serves the default model at 25 steps and leaves its screenshot there; this is how
# the README's screenshot is made. Unset, it serves the tiny test model at 2 steps.
SCREENSHOT = os.environ.get("FACESMITH_SCREENSHOT")
STEPS = "25" if SCREENSHOT else "2"


def test_attribute_controls_write_a_prompt_in_the_training_wording():
    attrs = attributes_from_controls("man", "senior", "gray", "any", ["glasses", "beard", "smiling"])
    assert attrs == {"Male": 1, "Gray_Hair": 1, "age": 70, "Eyeglasses": 1, "No_Beard": 0, "Smiling": 1}
    prompt = prompt_from_controls("man", "senior", "gray", "any", ["glasses", "beard", "smiling"])
    assert any(word in prompt for word in ("glasses", "eyeglasses", "spectacles"))
    assert "beard" in prompt and any(word in prompt for word in ("gray", "grey", "silver", "white"))
    # the same controls always write the same prompt
    assert prompt == prompt_from_controls("man", "senior", "gray", "any", ["glasses", "beard", "smiling"])
    assert "woman" in prompt_from_controls(
        "woman", "any", "blond", "any", []
    ) or "lady" in prompt_from_controls("woman", "any", "blond", "any", [])


@pytest.fixture(scope="module")
def page_server(request, tmp_path_factory):
    if not SCREENSHOT:
        yield request.getfixturevalue("server")
        return
    running = start_server(tmp_path_factory.mktemp("default-model"), [])
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1400,1250"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", {}).get("url") or message["params"].get("url", "")
            urls.add(url)
    return urls


def test_type_a_prompt_click_generate_and_see_an_image(page_server, browser, tmp_path):
    server = page_server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300 if SCREENSHOT else 90)
    browser.get(server.url + "/")
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))

    # attribute controls write the prompt
    browser.find_element(By.XPATH, "//*[@id='features']//label[contains(., 'glasses')]").click()
    browser.find_element(By.CSS_SELECTOR, "#write-prompt").click()
    wait.until(
        lambda d: "glasses" in prompt.get_attribute("value") or "spectacles" in prompt.get_attribute("value")
    )

    # type a prompt, few steps, generate
    prompt.clear()
    prompt.send_keys("a photo of a smiling woman with glasses")
    steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys(STEPS, Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img"))[0]
    wait.until(lambda d: image.get_attribute("naturalWidth") not in (None, "0"))
    shown = browser.find_element(By.CSS_SELECTOR, "#parameters textarea")
    wait.until(lambda d: f"Steps: {STEPS}," in shown.get_attribute("value"))
    parameters = shown.get_attribute("value")
    assert parameters.startswith("a photo of a smiling woman with glasses\n")
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(SCREENSHOT or str(tmp_path / "page.png"))

    # the download is the PNG with its metadata
    link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#downloads a[href*='file=']"))[0]
    data = httpx.get(link.get_attribute("href"), timeout=30).content
    downloaded = Image.open(io.BytesIO(data))
    assert downloaded.text["parameters"] == parameters
    seed = json.loads(downloaded.text["facesmith"])["config"]["seed"]

    # reproduce: a fresh page, upload the PNG, the controls take its recipe
    browser.get(server.url + "/")
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    saved = Path(tmp_path / "face.png")
    saved.write_bytes(data)
    browser.find_element(By.CSS_SELECTOR, "#reproduce input[type=file]").send_keys(str(saved))
    wait.until(lambda d: prompt.get_attribute("value") == "a photo of a smiling woman with glasses")
    seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
    wait.until(lambda d: seed_box.get_attribute("value") == str(seed))

    # a longer run shows the progress bar with the step count
    steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("30", Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    bar = browser.find_element(By.CSS_SELECTOR, "#progress")
    WebDriverWait(browser, 90, poll_frequency=0.05).until(lambda d: " of 30" in bar.text)
    wait.until(lambda d: "done: 30 steps" in bar.text)
    shown = browser.find_element(By.CSS_SELECTOR, "#parameters textarea")
    wait.until(lambda d: "Steps: 30," in shown.get_attribute("value"))

    # nothing left this machine: not from the browser, not from the server
    outside = {
        url for url in _requested_urls(browser)
        if url.startswith(("http", "ws")) and not url.startswith(("http://127.0.0.1", "ws://127.0.0.1"))
    }  # fmt: skip
    assert not outside
    assert server.outbound() == []


def _reproduce(server, file_data: dict) -> str:
    """Call the page's `reproduce` event as any HTTP client can; the answer's event stream as text."""
    call = httpx.post(server.url + "/gradio_api/call/reproduce", json={"data": [file_data]}, timeout=30)
    assert call.status_code == 200, call.text
    return httpx.get(f"{server.url}/gradio_api/call/reproduce/{call.json()['event_id']}", timeout=60).text


def test_reproduce_reads_only_pngs_uploaded_through_the_page(server, tmp_path):
    from facesmith.config import GenerateConfig
    from facesmith.metadata import png_bytes, recipe

    class Model:
        name, model_hash = "m", staticmethod(lambda: "0123456789")

    secret = png_bytes(
        Image.new("RGB", (8, 8)),
        recipe(
            GenerateConfig(prompt="a secret prompt", cfg=7.0, sampler="DDIM", width=64, height=64), Model(), 1
        ),
    )
    # a PNG with metadata on the server, inside Gradio's upload folder but never uploaded, and one outside
    planted = server.log.parent / "gradio" / "planted" / "secret.png"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(secret)
    outside = tmp_path / "secret.png"
    outside.write_bytes(secret)
    for path in (planted, outside, tmp_path / "missing.png", Path("relative.png")):
        answer = _reproduce(server, {"path": str(path), "meta": {"_type": "gradio.FileData"}})
        assert "event: error" in answer and "a secret prompt" not in answer
        assert str(path.parent) not in answer and os.getcwd() not in answer  # no paths, no working directory
    # the same bytes uploaded through the page are read
    [uploaded] = httpx.post(
        server.url + "/gradio_api/upload", files=[("files", ("face.png", secret, "image/png"))], timeout=30
    ).json()
    answer = _reproduce(
        server, {"path": uploaded, "orig_name": "face.png", "meta": {"_type": "gradio.FileData"}}
    )
    assert "event: complete" in answer and "a secret prompt" in answer
