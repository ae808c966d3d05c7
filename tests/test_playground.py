"""The playground page in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver (nothing is downloaded).

The test types a prompt and generates, watches the text grow chunk by chunk,
moves the temperature and checks the bars, opens an attention view and clicks
a token, hovers a token, switches to French, finds no console errors, and
saves a screenshot.  ``GPT2LAB_PLAYGROUND_MODEL`` serves another model (a
trained run, for the README's picture) and ``GPT2LAB_SCREENSHOT`` says where
to save the screenshot as well."""

import os
import shutil
import time
from pathlib import Path

import pytest

from served import serving, tiny_model

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1700")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian packages chromium and chromium-driver; "
                    "`.ci/run` installs them), so the page cannot be tested in a browser here")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    model = os.environ.get("GPT2LAB_PLAYGROUND_MODEL") or tiny_model(tmp_path_factory.mktemp("page") / "tiny")
    with serving(model) as (url, _):
        browser.get(url + "/")
        wait_for(browser, lambda: state(browser) == "idle", "the page to load and analyse its prompt")
        yield browser


def state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def wait_for(driver, condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def bar_probs(driver) -> list[float]:
    return [float(b.get_attribute("data-prob")) for b in driver.find_elements("css selector", "#bars .bar")]


def test_playground_in_chromium(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    d = page
    card = d.find_element("id", "card").text  # the model card is filled in
    assert "Generates in" in card and "fp32" in card  # the served dtype (serve --dtype)
    d.execute_script("""
        window.seen = [];
        new MutationObserver(() => {
          const s = document.querySelector('#output .streaming');
          if (s) window.seen.push(s.textContent.length);
        }).observe(document.getElementById('output'), {subtree: true, childList: true, characterData: true});""")
    max_tokens = d.find_element("id", "max-tokens")
    # Stop: a long generation cancelled as soon as it starts.
    max_tokens.clear()
    max_tokens.send_keys("1000")
    d.execute_script("window.seen = []")
    d.find_element("id", "generate").click()
    wait_for(d, lambda: d.execute_script("return (window.seen.at(-1) || 0) > 0 && document.body.dataset.state === 'generating'"),
             "the first tokens", 60)
    d.find_element("id", "stop").click()
    wait_for(d, lambda: state(d) == "idle", "the stop", 30)
    stopped_at = d.execute_script("return window.seen.at(-1)")
    assert d.find_element("id", "status").text == "stopped"
    time.sleep(0.5)
    assert d.execute_script("return window.seen.at(-1)") == stopped_at  # nothing more arrives

    # Type a prompt and generate; record the generated text's length at every change.
    prompt = d.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("JULIET:\nO Romeo, Romeo")
    max_tokens.clear()
    max_tokens.send_keys("90")
    d.execute_script("window.seen = []")
    d.find_element("id", "generate").click()
    wait_for(d, lambda: state(d) == "generating", "generation to start", 30)
    wait_for(d, lambda: state(d) == "idle", "generation to end")
    seen = d.execute_script("return window.seen")
    assert len(set(seen)) >= 5 and seen == sorted(seen), seen  # the text grew chunk by chunk
    status = d.find_element("id", "status").text
    assert "tokens in" in status, status
    tokens = d.find_elements("css selector", "#output .t")
    assert len(tokens) > 10 and any("gen" in t.get_attribute("class") for t in tokens)

    # Hover a token: its id, probability and the model's guesses.
    ActionChains(d).move_to_element(tokens[-1]).perform()
    tip = d.find_element("id", "tip")
    wait_for(d, tip.is_displayed, "the token's tooltip", 10)
    assert "id" in tip.text and "%" in tip.text

    # Temperature: the same logits, redrawn.  0 is greedy (one bar of 100%), 2 is flatter than 1.
    slider = d.find_element("id", "temperature")
    at_one = bar_probs(d)
    assert len(at_one) == 10 and 0 < at_one[0] < 1
    slider.send_keys(Keys.HOME)
    at_zero = bar_probs(d)
    assert at_zero[0] == 1 and sum(at_zero[1:]) == 0
    slider.send_keys(Keys.END)
    at_two = bar_probs(d)
    assert at_two[0] < at_one[0] and at_two != at_one
    assert d.find_element("id", "temperature-value").text == "2.00"
    for _ in range(20):
        slider.send_keys(Keys.LEFT)  # back to 1.00 in steps of 0.05
    assert bar_probs(d) == pytest.approx(at_one, abs=1e-6)

    # Attention: layer 1, head 2, then click a token to see where it looks.
    Select(d.find_element("id", "layer")).select_by_value("1")
    wait_for(d, lambda: d.execute_script("return state.attention && state.attention.layer") == 1, "layer 1")
    d.find_element("css selector", '#heads button[data-head="2"]').click()
    assert "on" in d.find_element("css selector", '#heads button[data-head="2"]').get_attribute("class")
    spans = d.find_elements("css selector", "#att-tokens span")
    spans[3].click()
    spans = d.find_elements("css selector", "#att-tokens span")
    assert spans[3].get_attribute("class") == "query"
    assert all(s.get_attribute("class") == "later" for s in spans[4:])
    weights = [float(s.get_attribute("title").rstrip("%")) for s in spans[:4]]
    assert sum(weights) == pytest.approx(100, abs=0.5)  # where token 3 looks: all of its attention
    painted = d.execute_script("""
        const c = document.getElementById('heatmap'), x = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < x.length; i += 4) if (x[i] < 250) n++; return n;""")
    assert painted > 0

    # French, then back: every labelled element follows.
    d.find_element("id", "lang-fr").click()
    assert d.find_element("id", "generate").text == "Générer"
    assert "Paramètres" in d.find_element("id", "card").text
    d.save_screenshot(str(tmp_path / "playground.fr.png"))
    d.find_element("id", "lang-en").click()
    assert d.find_element("id", "generate").text == "Generate"

    # For the picture: the last token's attention, and a token's details on hover.
    d.find_elements("css selector", "#att-tokens span")[-1].click()
    d.execute_script("window.scrollTo(0, 0)")
    ActionChains(d).move_to_element(d.find_elements("css selector", "#output .t.gen")[4]).perform()

    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    shot = tmp_path / "playground.png"
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("GPT2LAB_SCREENSHOT"):
        Path(os.environ["GPT2LAB_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, os.environ["GPT2LAB_SCREENSHOT"])
    print(f"\nscreenshots: {shot} and {tmp_path / 'playground.fr.png'}")
