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


# ----------------------------------------------------------------------------------------------------------
# The image-to-image / inpaint and edit-a-face tabs


def _open_tab(browser, wait, label: str) -> None:
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.find_elements(By.XPATH, f"//button[@role='tab' and contains(., '{label}')]"))
    browser.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{label}')]").click()


def _set_number(browser, selector: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def _tick_detailer(browser, wait, prefix: str) -> None:
    """Open the detailer's accordion (closed, its controls are not rendered) and tick "Detail faces"."""
    from selenium.webdriver.common.by import By

    header = browser.find_element(
        By.XPATH, f"//*[@id='{prefix}-detailer']//*[contains(text(), 'Face detailer')]"
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    box = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{prefix}-detail input[type=checkbox]"))[0]
    box.click()
    wait.until(lambda d: box.is_selected())


def _download(browser, wait, selector: str) -> Image.Image:
    from selenium.webdriver.common.by import By

    link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{selector} a[href*='file=']"))[0]
    return Image.open(io.BytesIO(httpx.get(link.get_attribute("href"), timeout=30).content))


def _gradient(size: int = 64) -> Image.Image:
    import numpy as np

    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=-1))


def test_img2img_tab_draws_a_mask_on_the_upload_and_inpaints_it(page_server, browser, tmp_path):
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300 if SCREENSHOT else 90)
    browser.get(page_server.url + "/")
    _open_tab(browser, wait, "Image to image")
    init = _gradient(128 if SCREENSHOT else 64)
    init.save(tmp_path / "init.png")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#i2i-image input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#i2i-image input[type=file]").send_keys(str(tmp_path / "init.png"))
    canvas = wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, "#i2i-image canvas")
                                   if c.is_displayed() and c.size["width"] > 50])[0]  # fmt: skip
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    # a stroke across the upper left of the picture, in the editor's brush (its default tool)
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -canvas.size["width"] // 4,
                                                                 -canvas.size["height"] // 4)  # fmt: skip
    stroke.click_and_hold()
    for _ in range(6):
        stroke.move_by_offset(8, 2)
    stroke.release().perform()
    browser.find_element(By.CSS_SELECTOR, "#i2i-prompt textarea").send_keys("a photo of a face")
    _set_number(browser, "#i2i-steps input[type=number]", "25" if SCREENSHOT else "4")  # 4 x 0.4: a face step
    _tick_detailer(browser, wait, "i2i")
    browser.find_element(By.CSS_SELECTOR, "#i2i-generate").click()
    shown = browser.find_element(By.CSS_SELECTOR, "#i2i-parameters textarea")
    wait.until(lambda d: "Denoising strength: 0.75" in shown.get_attribute("value"))
    parameters = shown.get_attribute("value")
    assert "ADetailer model: mtcnn" in parameters and "Mask blur: 4" in parameters
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(
        SCREENSHOT.replace(".png", "-img2img.png") if SCREENSHOT else str(tmp_path / "i2i.png")
    )

    made = _download(browser, wait, "#i2i-downloads")
    assert made.text["parameters"] == parameters
    assert json.loads(made.text["facesmith"])["config"]["mask"] == "drawn"
    change = np.abs(np.asarray(made.convert("RGB"), dtype=np.int16) - np.asarray(init, dtype=np.int16)).max(
        -1
    )
    # the stroke was repainted, what the brush left alone is the upload's own pixels
    assert (change > 10).mean() > 0.01 and (change == 0).mean() > 0.3


def test_edit_tab_says_when_there_is_no_face(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)
    browser.get(page_server.url + "/")
    _open_tab(browser, wait, "Edit a face")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "wall.png")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-photo input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#edit-photo input[type=file]").send_keys(
        str(tmp_path / "wall.png")
    )
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-photo img"))
    browser.find_element(By.XPATH, "//*[@id='edit-add']//label[contains(., 'smiling')]").click()
    browser.find_element(By.CSS_SELECTOR, "#edit-run").click()
    wait.until(lambda d: "no face was found in the uploaded photo" in d.page_source)
    assert "Traceback" not in browser.page_source


def test_edit_tab_edits_a_real_face_and_img2img_repaints_its_detected_mouth(
    page_server, browser, shared_data, tmp_path
):
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 300 if SCREENSHOT else 90)
    face = Image.open(shared_data / "celeba" / "images" / "000001.jpg").convert("RGB").resize((178, 218))
    portrait = Image.new("RGB", (256, 256), (90, 120, 150))
    portrait.paste(face, (39, 19))
    portrait.save(tmp_path / "portrait.png")
    browser.get(page_server.url + "/")
    _open_tab(browser, wait, "Edit a face")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-photo input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#edit-photo input[type=file]").send_keys(
        str(tmp_path / "portrait.png")
    )
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-photo img"))
    browser.find_element(By.XPATH, "//*[@id='edit-add']//label[contains(., 'eyeglasses')]").click()
    _set_number(browser, "#edit-steps input[type=number]", "25" if SCREENSHOT else "4")
    browser.find_element(By.CSS_SELECTOR, "#edit-run").click()
    caption = browser.find_element(By.CSS_SELECTOR, "#edit-caption textarea")
    wait.until(lambda d: caption.get_attribute("value"))
    assert any(word in caption.get_attribute("value") for word in ("glasses", "spectacles", "eyeglasses"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-faces img"))
    # the page's own shot only: the photo is CelebA's, which is never committed
    browser.save_screenshot(str(tmp_path / "edit.png"))
    edited = _download(browser, wait, "#edit-download")
    assert edited.size == portrait.size and "Version: facesmith edit" in edited.text["parameters"]
    assert json.loads(edited.text["facesmith"])["edit"]["add"] == ["eyeglasses"]

    # the same photo in the img2img tab, its mask the mouth MTCNN finds
    _open_tab(browser, wait, "Image to image")
    browser.find_element(By.CSS_SELECTOR, "#i2i-image input[type=file]").send_keys(
        str(tmp_path / "portrait.png")
    )
    browser.find_element(By.XPATH, "//*[@id='i2i-mask']//label[contains(., 'mouth')]").click()
    browser.find_element(By.CSS_SELECTOR, "#i2i-prompt textarea").send_keys("a smiling face")
    _set_number(browser, "#i2i-steps input[type=number]", STEPS)
    browser.find_element(By.CSS_SELECTOR, "#i2i-generate").click()
    made = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#i2i-downloads a[href*='file=']"))
    made = _download(browser, wait, "#i2i-downloads")
    assert json.loads(made.text["facesmith"])["config"]["mask"] == "mouth"
    from facesmith.img2img import resize_image

    start = resize_image(portrait, made.width, made.height, "just resize")  # the working-size init image
    change = np.abs(np.asarray(made.convert("RGB"), dtype=np.int16) - np.asarray(start, dtype=np.int16)).max(
        -1
    )
    assert (change == 0).mean() > 0.5 and (change > 10).any()  # the mouth moved, the rest did not
