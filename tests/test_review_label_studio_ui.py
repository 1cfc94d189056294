"""The exported tasks in Label Studio's own labeling page, in headless Chromium: the image shows.

Both ways of referencing images (an inline data URI; a ``/data/local-files/`` URL served from
the project's Local files storage) are opened in the labeling interface of the real server
(fixtures_labelstudio), and the test waits until the page's image has decoded pixels of the
exported image's size. Chromium comes from scripts/install_chromium.sh, as for the report's test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio
from PIL import Image
from typer.testing import CliRunner

from chromium import CHROMIUM, require_chromium
from fixtures_labelstudio import PASSWORD, USER
from vlmopt.cli import app
from vlmopt.review.export import labeling_config_path

pytestmark = pytest.mark.slow

sync_api = require_chromium()


def export(run: Path, out: Path, *options) -> dict:
    done = CliRunner().invoke(app, ["review", "export", str(run), "-o", str(out), "--limit", "1", *map(str, options)])
    assert done.exit_code == 0, done.output
    return json.loads(out.read_text())[0]


@pytest.mark.parametrize("how", ["inline", "local-files"])
def test_the_labeling_page_shows_the_exported_image(label_studio, review_run, tmp_path, how):
    root, run = review_run
    image_root = label_studio.document_root / f"ui-{how}"
    shutil.copytree(root / "data", image_root / "data")
    local = ("--local-files-root", label_studio.document_root) if how == "local-files" else ()
    task = export(run, tmp_path / "tasks.json", "--image-root", image_root, *local)
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = client.projects.create(
        title=f"vlmopt ui {how}", label_config=labeling_config_path(tmp_path / "tasks.json").read_text()
    )
    if local:
        client.import_storage.local.create(project=project.id, path=str((image_root / "data").resolve()))
    client.projects.import_tasks(project.id, request=[task])
    (stored,) = client.tasks.list(project=project.id)
    expected = Image.open(image_root / "data" / f"{task['data']['item_id']}.png").size

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"{label_studio.url}/user/login", wait_until="load")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
        page.goto(f"{label_studio.url}/projects/{project.id}/data?task={stored.id}", wait_until="load")
        image = page.wait_for_selector(f"img[src='{task['data']['image']}']", timeout=120_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=60_000)
        size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        page.screenshot(path=str(tmp_path / f"labeling-{how}.png"))
        browser.close()
    assert tuple(size) == expected
