"""The HTML report of a real short run, opened in a real headless Chromium."""

import json
import shutil
from pathlib import Path

import pytest
from test_training import write_qa

from irm.report.html import build_report
from irm.training.config import TrainConfig
from irm.training.run import train

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = write_qa(tmp / "qa.jsonl", n=48)
    result = train(TrainConfig(host="tiny-random-llama", data=str(data), out=str(tmp / "run"), max_steps=6,
                               batch_size=4, val_every=3, log_every=1), progress=False)
    run = result.run_dir
    from irm.report.demo import side_by_side

    side_by_side(run, "tiny-random-llama", ["What is water?", "How far is the Moon?"], max_new_tokens=8)
    # An analysis folder with a picture, as `irm analyze` writes one.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run / "analysis").mkdir()
    fig, ax = plt.subplots()
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(run / "analysis" / "heatmap_mean.png")
    plt.close(fig)
    (run / "analysis" / "summary.json").write_text(json.dumps({"striation": 0.9, "top_indices": [{"index": 3, "share": 0.2}]}))
    return run


def test_report_is_self_contained(short_run):
    page = build_report(short_run)
    text = page.read_text()
    assert page == short_run / "report.html"
    for section in ("Outcome", "Training and validation loss", "Generations side by side", "Inside the IRM", "Resolved configuration"):
        assert section in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from anywhere
    assert text.count("data:image/png;base64,") >= 2


def test_report_in_headless_chromium(short_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed and could not be installed (make test tries apt-get)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    page_path = build_report(short_run)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert images and all(done and width > 0 for done, width in images), images
    for section in ("Outcome", "Training and validation loss", "Generations side by side"):
        assert any(section in h for h in headings), headings
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, Path(short_run) / "report.png")
