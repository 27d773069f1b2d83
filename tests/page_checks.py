"""Checks of built reports as a reader sees them: in headless Chromium at 1280 px (nothing scrolls sideways, no
table hides a column, no image runs out of its box) and in the figures' own pixels (no legend is cut off)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

WIDTH = 1280


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when headless Chromium is not installed."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser(profile: Path) -> Any:
    """A headless Chromium window 1280 px wide that logs the page's console, or a skip when there is none."""
    found = chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--window-size={WIDTH},900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_page_load_timeout(30)
    return driver


def open_page(browser: Any, path: Path) -> list[dict]:
    """Load a file, force lazy images to load, wait for all of them; return the console log."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(path.resolve().as_uri())
    browser.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete);")
    )
    return browser.get_log("browser")


def overflow(browser: Any) -> list[str]:
    """What does not fit the open page's width: the page scrolling sideways, a table wider than its box (a
    hidden column), an image or figure whose right edge runs past its card. Empty when everything fits."""
    return browser.execute_script(
        """const found = [], root = document.documentElement;
        if (root.scrollWidth > root.clientWidth) found.push(`page ${root.scrollWidth} > ${root.clientWidth} px`);
        document.querySelectorAll('.tablewrap').forEach((wrap, i) => {
            if (wrap.scrollWidth > wrap.clientWidth + 1) {
                const head = wrap.querySelector('th') ? wrap.querySelector('th').innerText : '';
                found.push(`table ${i} (${head}…) ${wrap.scrollWidth} > ${wrap.clientWidth} px`);
            }
        });
        document.querySelectorAll('img').forEach(img => {
            const box = (img.closest('.card') || document.body).getBoundingClientRect();
            if (img.getBoundingClientRect().right > box.right + 0.5) found.push(`image ${img.getAttribute('src')}`);
        });
        return found;"""
    )


def clipped_legends(run_dir: Path) -> list[str]:
    """Rebuild the report of ``run_dir`` and name every figure whose legend runs past the figure's edges (and
    so is cut off in its PNG); also returns how many figures were drawn, as ``'<n> figures'`` first."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from conceptspace import figures, report

    found: list[str] = []
    count = 0
    save = figures.save_figure

    def checked(run_dir: Path, figure: Any, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal count
        count += 1
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        bounds = figure.bbox
        for legend in [*figure.legends, *(a.get_legend() for a in figure.axes if a.get_legend())]:
            box = legend.get_window_extent(canvas.get_renderer())
            if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > bounds.width + 0.5 or box.y1 > bounds.height + 0.5:
                found.append(f"{name}: legend {box.bounds} outside {bounds.bounds}")
        return save(run_dir, figure, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save_figure", checked)
        patch.setattr(report, "save_figure", checked)
        report.build_report(run_dir)
    return [f"{count} figures", *found]
