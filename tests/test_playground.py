"""The playground page in a real browser: Debian's headless Chromium, driven by selenium through
chromedriver, against the real API process and the served tiny checkpoint. It submits a job, sees the
progress move and preview frames arrive, and plays the finished MP4; a screenshot is kept."""

from __future__ import annotations

import shutil
import urllib.request

import pytest
from conftest import PROJECT
from test_api import start_api

from wan_triton.video import decode_mp4

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = PROJECT / "out" / "test-artifacts"
# Enough steps (~0.1 s each here) that the page polls the job several times while it runs.
JOB = {"width": "256", "height": "128", "num_frames": "33", "num_inference_steps": "30", "seed": "3"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:  # .ci/run installs both
        pytest.fail("the playground test needs Debian's chromium and chromium-driver (apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Headless, as root, on a machine without a network beyond loopback: no sandbox, no background calls.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,1300",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_page_generates_and_plays_a_video(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = start_api(served.url, tmp_path)
    try:
        browser.get(api.url + "/")
        wait = WebDriverWait(browser, 120, poll_frequency=0.05)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) > 1)  # /v1/models answered
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a blue square moving left")
        for name, value in JOB.items():
            field = browser.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        # What the page shows while the job runs, sampled in the page itself every 20 ms.
        browser.execute_script(
            "window.seen = {progress: [], preview: false};"
            "setInterval(() => { seen.progress.push(document.getElementById('progress').value);"
            " seen.preview ||= !document.getElementById('preview').hidden; }, 20);"
        )
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.execute_script("const v = document.getElementById('video'); return !v.hidden;"))
        wait.until(lambda d: d.execute_script("return document.getElementById('video').readyState >= 2"))
        seen = browser.execute_script("return window.seen")
        moving = sorted({value for value in seen["progress"] if 0 < value < 100})
        assert len(moving) >= 2, seen["progress"]  # the bar moved through the steps
        assert seen["preview"], "a preview frame was shown while the job ran"
        video = browser.execute_script(
            "const v = document.getElementById('video');"
            "return {source: v.dataset.source, id: v.dataset.videoId, duration: v.duration, width: v.videoWidth,"
            " height: v.videoHeight, src: v.currentSrc, status: document.getElementById('status').textContent};"
        )
        assert video["source"] == f"/v1/videos/{video['id']}/content" and video["src"].startswith("blob:")
        assert (video["width"], video["height"]) == (256, 128) and video["duration"] > 0, video
        assert "completed" in video["status"]
        mp4 = urllib.request.urlopen(api.url + video["source"], timeout=30).read()  # what the page played
        frames, _ = decode_mp4(mp4)
        assert frames.shape == (33, 128, 256, 3)
        link = browser.find_element(By.ID, "download")
        assert link.is_displayed() and link.get_attribute("download") == f"{video['id']}.mp4"
        # The history lists it with its thumbnail.
        wait.until(
            lambda d: d.execute_script(
                f"const li = document.querySelector('#history li[data-video-id=\"{video['id']}\"] img');"
                " return li !== null && li.complete && li.naturalWidth === 256;"
            )
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    finally:
        api.stop()
