"""Drives carpool's dashboard in headless Chromium (selenium and chromedriver) for the
dashboard test, one command per line on stdin, one JSON answer per line on stdout:

- ``open URL``: loads the page and waits for its first live frame;
- ``figures``: waits for the next live update and answers the figures the page shows;
- ``screenshot PATH WIDTH HEIGHT``: resizes the window, waits for an update, saves a PNG;
- ``keyboard N``: reloads the page, presses Tab N times from the top and answers where each
  press landed;
- ``quit``.

Usage: python dashboard.py CHROMEDRIVER CHROMIUM
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

IDS = [
    "role", "total-pending", "total-running", "total-succeeded", "total-failed",
    "total-workers", "bill-cost", "bill-invocations", "bill-lambda", "bill-requests",
    "bill-saving",
]


def answer(value):
    print(json.dumps(value), flush=True)


def updates(driver):
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-updates") or 0)


def next_update(driver, timeout=15):
    seen = updates(driver)
    WebDriverWait(driver, timeout).until(lambda d: updates(d) > seen)


FIGURES = """
const text = (id) => document.getElementById(id).textContent;
const out = {};
for (const id of arguments[0]) out[id] = text(id);
out.updates = Number(document.body.dataset.updates || 0);
out.status = text("status");
out.functions = {};
for (const row of document.querySelectorAll("#functions tbody tr")) {
  const cells = {};
  for (const td of row.querySelectorAll("td")) cells[td.dataset.k] = td.textContent;
  out.functions[row.dataset.function] = cells;
}
out.failures = [...document.querySelectorAll("#failures li")].map((li) => li.textContent);
out.workers = document.querySelectorAll("#workers tbody tr").length;
out.standby = !document.getElementById("standby").hidden;
out.active_url = text("active-url");
out.active_link = document.getElementById("active-link").href;
out.layout = Object.fromEntries(["h-bill", "h-limit", "h-queue", "h-functions"].map(
  (id) => [id, Math.round(document.getElementById(id).getBoundingClientRect().top + window.scrollY)]));
out.scrolls_sideways = document.documentElement.scrollWidth > document.documentElement.clientWidth;
return out;
"""


def figures(driver):
    # Read in one script, so that no update lands between two figures.
    out = driver.execute_script(FIGURES, IDS)
    # What the browser reported: script errors, refused resources (the page's policy).
    out["console"] = [
        e["message"] for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")
    ]
    return out


def main():
    chromedriver, chromium = sys.argv[1], sys.argv[2]
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if words[0] == "open":
                    driver.get(words[1])
                    WebDriverWait(driver, 20).until(lambda d: updates(d) >= 1)
                    answer({"ok": True, "url": driver.current_url, "title": driver.title})
                elif words[0] == "figures":
                    next_update(driver)
                    answer({"ok": True, "figures": figures(driver)})
                elif words[0] == "screenshot":
                    driver.set_window_size(int(words[2]), int(words[3]))
                    next_update(driver)
                    next_update(driver)
                    # The whole page, not only the window.
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.set_window_size(int(words[2]), max(int(words[3]), height))
                    next_update(driver)
                    driver.save_screenshot(words[1])
                    answer({"ok": True})
                elif words[0] == "keyboard":
                    # Where Tab takes the keyboard from the top of the page.
                    # A fresh load: Tab starts from the top of the document.
                    driver.refresh()
                    WebDriverWait(driver, 20).until(lambda d: updates(d) >= 1)
                    stops = []
                    for _ in range(int(words[1])):
                        ActionChains(driver).send_keys(Keys.TAB).perform()
                        stops.append(driver.execute_script(
                            "const e = document.activeElement;"
                            "return e.id || e.getAttribute('aria-labelledby') || e.textContent.trim().slice(0, 40);"))
                    answer({"ok": True, "stops": stops})
                elif words[0] == "quit":
                    answer({"ok": True})
                    return
                else:
                    answer({"ok": False, "error": f"unknown command {words[0]}"})
            except Exception as e:  # the test reads the failure and says it
                answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
