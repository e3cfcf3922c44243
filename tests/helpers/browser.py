"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for the
download page's tests. Downloads go to a directory set per test over the DevTools
protocol; :meth:`Browser.close` quits the browser and stops the driver by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1024,768")


def chromium_missing() -> str | None:
    """Why no browser test can run here (None: they can)."""
    if not os.access(CHROMIUM, os.X_OK) or shutil.which("chromedriver") is None:
        return "chromium and chromium-driver are not installed (./dev.sh test installs them)"
    return None


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="megafs-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        self.service = Service(executable_path=shutil.which("chromedriver"))
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(60)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            proc = self.service.process
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str, downloads: Path) -> None:
        downloads.mkdir(parents=True, exist_ok=True)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(downloads)})
        self.driver.get("about:blank")  # a new document even when only the fragment changes
        self.driver.get(url)

    def status(self) -> str:
        return self.driver.find_element(By.ID, "status").text

    def wait_status(self, *, timeout: float = 120) -> str:
        """The status once it is no longer transient (loading, downloading)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.status()
            if text not in ("loading", "downloading", ""):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the page still says {text!r} after {timeout} s")
            time.sleep(0.1)

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def before_page_scripts(self, source: str) -> str:
        """Run *source* in every new document before its own scripts; returns an id for
        :meth:`forget_script`."""
        return self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                           {"source": source})["identifier"]

    def forget_script(self, identifier: str) -> None:
        self.driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                    {"identifier": identifier})

    def run_async(self, source: str, *args):
        """The value *source* passes to ``done`` (a promise's result, within 60 s)."""
        self.driver.set_script_timeout(60)
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];" + source, *args)

    def block(self, patterns: list[str]) -> None:
        """Make requests to URLs matching *patterns* fail as if the network were down."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": patterns})


def wait_download(directory: Path, name: str, *, timeout: float = 120) -> Path:
    """The finished download *name* in *directory* (Chromium writes NAME.crdownload first)."""
    deadline = time.monotonic() + timeout
    path = directory / name
    while True:
        if path.exists() and not any(p.suffix == ".crdownload" for p in directory.iterdir()):
            return path
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not downloaded in {timeout} s:"
                                 f" {sorted(p.name for p in directory.iterdir())}")
        time.sleep(0.1)
