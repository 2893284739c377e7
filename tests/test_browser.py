"""Each tab used in a real browser (Playwright driving Debian's Chromium), with a screenshot per tab.

Screenshots land in test-output/screenshots/. In CI (CI=true) a missing browser is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
SHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def page(app_server):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(app_server["url"])
        page.wait_for_selector("#generate-button")
        yield page
        browser.close()


def test_generate_tab(page):
    assert "Tiny preset" in page.inner_text("#model-banner")
    page.click("#generate-button")
    page.wait_for_function("document.querySelector('#prompt textarea')?.value.length > 10")
    assert page.input_value("#prompt textarea") == (
        "a photo of a tabby, a cat with a grey or tawny coat mottled with black, in snow")
    assert page.locator("#guide img").count() == 1 and page.locator("#image img").count() == 1
    page.screenshot(path=str(SHOTS / "generate.png"), full_page=True)


def test_predict_tab(page):
    """A photo of a cat: offline, the standard classifier runs on real ImageNet weights (EfficientNet-Lite0)."""
    from conftest import real_photo

    page.get_by_role("tab", name="Predict").click()
    page.locator("#predict-photo input[type=file]").set_input_files(str(real_photo("chelsea")))
    page.click("#predict-button")
    page.wait_for_selector("#predict-preview img")
    page.wait_for_function("document.querySelector('#predict-bg')?.innerText.includes('in snow')")
    page.wait_for_function("document.querySelector('#predict-ref')?.innerText.includes('tiger cat')")
    assert page.locator("#predict-fg").inner_text().strip()
    assert "tf_efficientnet_lite0.pypi_in1k" in page.inner_text("#model-banner")
    page.screenshot(path=str(SHOTS / "predict.png"), full_page=True)


def test_across_backgrounds_tab(page):
    page.get_by_role("tab", name="Across backgrounds").click()
    page.click("#across-button")
    page.wait_for_function("document.querySelector('#across-summary')?.innerText.includes('Disentangled fg head')")
    page.wait_for_function("document.querySelectorAll('#across-gallery img').length >= 10")
    assert "One tabby" in page.inner_text("#across-summary")
    table = page.inner_text("#across-table")
    assert "on grass" in table and "at night" in table
    page.screenshot(path=str(SHOTS / "across.png"), full_page=True)


def test_dataset_tab(page):
    page.get_by_role("tab", name="Dataset").click()
    page.click("#data-load")
    page.wait_for_function("document.querySelector('#data-summary')?.innerText.includes('60')")
    assert "3 classes x 10 backgrounds" in page.inner_text("#data-summary")
    page.wait_for_selector("#data-gallery img")
    page.screenshot(path=str(SHOTS / "dataset.png"), full_page=True)


def test_review_tab_with_keyboard(page, app_server):
    from d3s.review import ReviewStore

    page.get_by_role("tab", name="Review").click()
    page.fill("#reviewer input, #reviewer textarea", "ann")
    page.click("#review-start")
    page.wait_for_function("document.querySelector('#review-text')?.innerText.includes('0 of 60 reviewed by ann')")
    page.locator("#review-text").click()  # focus leaves the text box, so keys go to the shortcuts
    page.keyboard.press("y")
    page.wait_for_function("document.querySelector('#review-text')?.innerText.includes('1 of 60 reviewed by ann')")
    page.keyboard.press("u")
    page.keyboard.press("n")
    page.wait_for_function("document.querySelector('#review-text')?.innerText.includes('2 of 60 reviewed by ann')")
    page.screenshot(path=str(SHOTS / "review.png"), full_page=True)
    reviews = ReviewStore(app_server["reviews"]).reviews()
    assert [(r.reviewer, r.object_present, r.unsafe) for r in reviews] == [("ann", True, False), ("ann", False, True)]


def test_benchmark_tab(page):
    """The operator's results folder (--results) is offered by its name, chosen already."""
    page.get_by_role("tab", name="Benchmark").click()
    assert page.input_value("#results-folder input") == "results"
    page.click("#benchmark-button")
    page.wait_for_function("document.querySelector('#benchmark-table')?.innerText.includes('clip:tiny')")
    assert "test_resnet" in page.inner_text("#benchmark-table")
    page.wait_for_selector("#benchmark-heatmap img")
    # the model picker is filled by Show; its worst cells come with sample images and the model's guesses
    page.wait_for_function("document.querySelector('#benchmark-model input')?.value.length > 0")
    page.click("#benchmark-cells-button")
    page.wait_for_selector("#benchmark-samples img")
    page.wait_for_function("document.querySelector('#benchmark-cells-note')?.innerText.includes('does worst')")
    assert "background" in page.inner_text("#benchmark-cells")
    page.screenshot(path=str(SHOTS / "benchmark.png"), full_page=True)
