"""The HTML report in a real headless Chromium: loads from file:// with no network, and its
filters leave exactly the right cards.

Chromium comes from the distribution (``scripts/install_chromium.sh``, run by ``make test``) and
Playwright drives it through ``executable_path``: no browser download. Without
``/usr/bin/chromium`` the tests skip, saying so, except under CI (``$CI`` set), where that fails.
"""

from __future__ import annotations

import pytest

from chromium import CHROMIUM, require_chromium
from fixtures_runs import INVALID_IDS, SINGLE_LABEL_ROWS, WRONG_IDS
from vlmopt.reports.html import write_report

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = require_chromium()

ALL_IDS = [row[0] for row in SINGLE_LABEL_ROWS]


@pytest.fixture(scope="module")
def page(fixture_run_dir, tmp_path_factory):
    """The fixture run's report open in headless Chromium (fresh profile, offline); every request
    the page makes is recorded in ``page.requests``."""
    report = write_report(fixture_run_dir)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS, offline=True,
            viewport={"width": 1300, "height": 900},
        )
        page = context.new_page()
        page.requests = []
        page.errors = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(report.as_uri(), wait_until="load")
        yield page
        context.close()


def visible_ids(page) -> list[str]:
    return page.eval_on_selector_all(".grid .card:not([hidden])", "cards => cards.map(c => c.dataset.id)")


def reset(page) -> None:
    page.click("#f-reset")


def test_page_loads_from_file_without_network_or_script_errors(page):
    assert page.errors == []
    assert [url for url in page.requests if not url.startswith(("file://", "data:"))] == []
    assert page.title().endswith("vlmopt report")
    assert page.eval_on_selector_all(".card img", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")


def test_grid_shows_every_prediction(page):
    reset(page)
    assert visible_ids(page) == ALL_IDS
    assert page.inner_text("#f-shown") == f"{len(ALL_IDS)} of {len(ALL_IDS)} shown"


def test_misclassified_filter_leaves_exactly_the_wrong_ones(page):
    reset(page)
    page.check("#f-wrong")
    assert set(visible_ids(page)) == WRONG_IDS
    assert page.inner_text("#f-shown") == f"{len(WRONG_IDS)} of {len(ALL_IDS)} shown"
    page.uncheck("#f-wrong")
    assert visible_ids(page) == ALL_IDS


def test_class_filters_combine(page):
    reset(page)
    page.select_option("#f-gold", "square")
    assert visible_ids(page) == ["img_04", "img_05", "img_06", "img_07"]
    page.check("#f-wrong")
    assert visible_ids(page) == ["img_06", "img_07"]
    page.uncheck("#f-wrong")
    page.select_option("#f-gold", "")
    page.select_option("#f-pred", "invalid")
    assert set(visible_ids(page)) == INVALID_IDS


def test_low_confidence_slider_keeps_answers_below_the_threshold(page):
    reset(page)
    # What dragging the slider does: set the value, fire "input".
    page.eval_on_selector("#f-conf", "el => { el.value = '0.6'; el.dispatchEvent(new Event('input')); }")
    expected = [row[0] for row in SINGLE_LABEL_ROWS if row[4] is not None and row[4] < 0.6]
    assert visible_ids(page) == expected == ["img_02", "img_07", "img_11"]
    assert page.inner_text("#f-conf-value") == "< 0.60"


def test_confusion_cell_click_shows_its_images(page):
    reset(page)
    page.click("table.confusion td.cell[data-gold='triangle'][data-pred='circle']")
    assert visible_ids(page) == ["img_11"]


def test_screenshot_of_the_report(page, tmp_path):
    reset(page)
    path = tmp_path / "report.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000, "a blank page compresses far smaller"
