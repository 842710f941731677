"""Headless Chromium through selenium, for the report's browser test and its README picture.

Uses the system's Chromium and chromedriver (Debian: `apt-get install chromium chromium-driver`),
never a downloaded browser: both paths are given to selenium, so its driver manager stays idle.
`browser_missing()` says why no browser can run here (None when one can).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Optional, Tuple

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names) -> Optional[str]:
    for n in names:
        found = shutil.which(n) or (
            f"/usr/bin/{n}" if os.access(f"/usr/bin/{n}", os.X_OK) else None
        )
        if found:
            return found
    return None


def find_chromium() -> Tuple[Optional[str], Optional[str]]:
    """(browser, driver) paths; HIFI123_CHROMIUM / HIFI123_CHROMEDRIVER override."""
    return (
        os.environ.get("HIFI123_CHROMIUM") or _which(BROWSERS),
        os.environ.get("HIFI123_CHROMEDRIVER") or _which(DRIVERS),
    )


def browser_missing() -> Optional[str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; install.sh --test installs it)"
    browser, driver = find_chromium()
    if not browser or not driver:
        return (
            "no Chromium and chromedriver found (apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
    return None


def open_chromium(width: int = 1200, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    if not browser or not driver:
        raise RuntimeError(browser_missing() or "no browser")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium's driver manager: never download
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def wait_for(driver, script: str, timeout: float = 20.0, interval: float = 0.1):
    """Poll `return <script>` until it is truthy; returns its value, or raises TimeoutError."""
    end = time.time() + timeout
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        if time.time() > end:
            raise TimeoutError(f"still false after {timeout} s: {script}")
        time.sleep(interval)


def wait_viewer_decided(driver, timeout: float = 20.0) -> str:
    """Wait until the page's 3D viewer is "ready", "failed" or "none" (no model on the page)."""
    return wait_for(driver, "document.body && document.body.dataset.viewer", timeout)
