"""The HTML report of a real short run, opened in a real headless Chromium."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM_ARGS, write_qa
from irm.report.demo import side_by_side
from irm.report.html import build_report
from irm.training.config import TrainConfig
from irm.training.run import train


class _LengthScorer:
    """p(anger) grows with a text's length: enough to tell conditions apart, no model needed."""

    def score(self, texts):
        from irm.evaluation.scoring import EmotionScore

        return [EmotionScore(probs={"anger": (a := min(1.0, len(t) / 80)), "sadness": 0.0, "joy": 0.0, "neutral": 1 - a}) for t in texts]


def _tiny_evaluation(run):
    """The IRM off and at x1 on two prompts, as the demo's evaluation stage makes it."""
    from irm.core.adapters import load_adapter
    from irm.evaluation.evaluate import evaluate
    from irm.hosts.loading import load_host

    host = load_host("tiny-random-llama")
    adapter = load_adapter(run / "irm", host)
    prompts = ["What is water?", "How far is the Moon?"]
    return evaluate(host, {"irm": adapter}, prompts, target="anger", max_new_tokens=8, n_boot=50, scorer=_LengthScorer())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = write_qa(tmp / "qa.jsonl", n=48)
    result = train(
        TrainConfig(host="tiny-random-llama", data=str(data), out=str(tmp / "run"), max_steps=6, batch_size=4, val_every=3, log_every=1),
        progress=False,
    )
    run = result.run_dir
    side_by_side(_tiny_evaluation(run), run)
    # An analysis folder with a picture, as `irm analyze` writes one.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run / "analysis").mkdir()
    fig, ax = plt.subplots()
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(run / "analysis" / "heatmap_mean.png")
    plt.close(fig)
    (run / "analysis" / "summary.json").write_text(
        json.dumps({"striation": 0.9, "top_indices": [{"index": 3, "share": 0.2}], "layers": [1, 2, 3]})
    )
    import numpy as np

    mean_map = np.abs(np.random.default_rng(0).normal(size=(3, 64))).astype(np.float32)
    mean_map[:, 17] = 5.0  # a stripe at index 17
    np.save(run / "analysis" / "mean_abs_map.npy", mean_map)
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
        heatmap = _check_interactive_heatmap(page)
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
    assert heatmap["top"].split(",")[0] == "17"
    assert heatmap["hover"].startswith("layer ") and "index 17" in heatmap["hover"]
    assert heatmap["zoomed"] and "showing" in heatmap["zoomed"]


def _check_interactive_heatmap(page):
    """The report's interactive heatmap: drawn, hover shows layer/index/value, the wheel zooms."""
    box = page.locator("div.irm-heatmap canvas").first.bounding_box()
    page.locator("div.irm-heatmap canvas").first.scroll_into_view_if_needed()
    box = page.locator("div.irm-heatmap canvas").first.bounding_box()
    left, width = 44, box["width"] - 44 - 70  # the component's plot margins
    page.mouse.move(box["x"] + left + (17.5 / 64) * width, box["y"] + box["height"] / 2)
    found = page.evaluate(
        """() => { const el = document.querySelector('div.irm-heatmap'); const c = el.querySelector('canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let coloured = 0; for (let i = 0; i < px.length; i += 4) if (px[i + 3] && (px[i] + px[i + 1] + px[i + 2]) < 600) coloured++;
        return {top: el.dataset.top, hover: el.dataset.hover || '', coloured}; }"""
    )
    assert found["coloured"] > 1000, found
    page.mouse.wheel(0, -400)
    found["zoomed"] = page.evaluate("document.querySelector('div.irm-heatmap .irm-heatmap-caption').textContent")
    return found


def _cells(html_text):
    import re

    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", html_text, flags=re.S)]


def _estimate(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi}


@pytest.fixture(scope="module")
def run_with_results(short_run, tmp_path_factory):
    """The short run with an evaluation (as EvalReport.to_dict writes it), a real analysis
    summary and an ablation report."""
    from irm.evaluation.evaluate import METRICS, Condition, EvalReport
    from irm.evaluation.metrics import Estimate

    run = tmp_path_factory.mktemp("results") / "run"
    shutil.copytree(short_run, run)
    conditions = [
        Condition(
            name="host", adapter="host", kind="host", strength=0.0, metrics={m: Estimate(0.0023456, 0.00101, 0.00412) for m in METRICS}
        ),
        Condition(
            name="run x1",
            adapter="run",
            kind="irm",
            strength=1.0,
            metrics={**{m: Estimate(1.5, 1.25, 1.75) for m in METRICS}, "target": Estimate(0.4521, 0.3412, 0.5709)},
        ),
    ]
    report = EvalReport(
        host="tiny-random-llama",
        target_emotion="anger",
        prompts=3,
        samples=1,
        settings={"seed": 0, "strengths": [1.0]},
        conditions=conditions,
        generations=[],
    )
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    (run / "analysis" / "summary.json").write_text(
        json.dumps(
            {
                "host": "tiny-random-llama",
                "hidden_size": 16,
                "layers": [0, 1],
                "prompts": 2,
                "tokens": 20,
                "striation": {"score": 0.8123, "layer_share": 0.1, "residual_share": 0.2, "noise_level": 0.05},
                "striation_per_token": {"mean": 0.7, "median": 0.71, "min": 0.5, "max": 0.9},
                "top_k": {"indices": [7, 3, 11], "shares": [0.31, 0.2, 0.1], "total_share": 0.61},
                "sparsity": {"hoyer": {"mean": 0.4, "median": 0.4, "min": 0.3, "max": 0.5}},
                "coincidence_with_host": {"norm_gain": {"host_top_k": [7, 1, 2], "shared": [7], "overlap": 1, "expected_by_chance": 0.56}},
            }
        )
    )
    (run / "ablation").mkdir()
    metrics = {"mean_tokens": 8.0, "distinct_2": 0.9, "p_anger": 0.5}
    (run / "ablation" / "ablation.json").write_text(
        json.dumps(
            {
                "indices": [7, 3],
                "prompts": 2,
                "draws": 1,
                "seed": 0,
                "host": {**metrics, "p_anger": 0.1},
                "irm": metrics,
                "ablated": {**metrics, "p_anger": 0.2},
                "random": [{"indices": [1, 2], **metrics}],
                "change_ablated": {"mean_tokens": 0.0, "distinct_2": 0.0, "p_anger": -0.3},
                "change_random_mean": {"mean_tokens": 0.0, "distinct_2": 0.0, "p_anger": 0.0},
                "change_random_std": {"mean_tokens": 0.0, "distinct_2": 0.0, "p_anger": 0.0},
                "target": "anger",
                "irm_effect": 0.4,
                "effect_removed_ablated": 0.75,
                "effect_removed_random": [0.0],
            }
        )
    )
    return run


def test_report_evaluation_cells_read_mean_and_interval(run_with_results):
    text = build_report(run_with_results).read_text()
    evaluation = text[text.index("Evaluation: alignment and fluency") : text.index("Inside the IRM")]
    cells = _cells(evaluation)
    assert "0.452 [0.341, 0.571]" in cells  # the IRM's p(target): 3 significant digits
    assert "0.00235 [0.00101, 0.00412]" in cells and "1.50 [1.25, 1.75]" in cells
    for group in ("Alignment", "Fluency", "Drift from the host"):
        assert f"<h3>{group}</h3>" in evaluation
    assert "raw data: report.json" in evaluation  # the JSON only folded away


def test_report_tables_hold_no_json(run_with_results):
    text = build_report(run_with_results).read_text()
    cells = _cells(text)
    assert cells and not [c for c in cells if '{"' in c or "{&#34;" in c or "&#34;:" in c]
    analysis = _cells(text[text.index("Inside the IRM") : text.index("Ablation of dominant indices")])
    assert "0.8123" in analysis and "7" in analysis and "0.31" in analysis  # striation score, the top index and its share
    ablation = _cells(text[text.index("Ablation of dominant indices") : text.index("Resolved configuration")])
    assert "IRM, dominant indices zeroed" in ablation and "dominant indices zeroed" in ablation and "-0.3" in ablation
    assert "http://" not in text and "https://" not in text


def test_report_escapes_what_it_shows(short_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    (run / "generations.json").write_text(json.dumps([{"prompt": "<script>alert(1)</script>", "IRM off": "a & b"}]))
    text = build_report(run).read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)" in text and "a &amp; b" in text
    # the only scripts are the page's own: the heatmap component and the line that mounts it
    assert text.count("<script>") == 2 and "<script>IRMHeatmap.mountAll();</script>" in text


LEGACY_RUN = Path(__file__).parents[1] / "fixtures" / "legacy" / "run_complete"


@pytest.fixture
def _irm(irm_in_process):
    return irm_in_process


def test_cli_report_refuses_an_existing_out_file_without_overwrite(tmp_path, _irm):
    run = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run)
    mine = tmp_path / "mine.html"
    mine.write_text("my own notes")
    refused = _irm("report", str(run), "--out", str(mine), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert mine.read_text() == "my own notes" and not (run / "report.html").exists()
    done = _irm("report", str(run), "--out", str(mine), "--overwrite", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tiny-random-llama" in mine.read_text()


def test_cli_report_rewrites_its_own_default_page(tmp_path, _irm):
    run = tmp_path / "run"
    shutil.copytree(LEGACY_RUN, run)
    (run / "report.html").write_text("an older page")
    for args in ([], ["--out", str(run / "report.html")]):  # the default page, named or not
        again = _irm("report", str(run), *args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "tiny-random-llama" in (run / "report.html").read_text()
        (run / "report.html").write_text("an older page")


def test_sweep_page_links_each_run_page(tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(LEGACY_RUN, sweep / "runs" / "a")
    (sweep / "runs" / "b").mkdir()  # a run that has not started yet
    (sweep / "sweep.yaml").write_text("base: {host: tiny-random-llama}\n")
    page = build_report(sweep)
    text = page.read_text()
    assert page == sweep / "report.html" and (sweep / "runs" / "a" / "report.html").is_file()
    assert '<a href="runs/a/report.html">a</a>' in text and "unfinished" in _cells(text)
    assert "<h2>Sweep file</h2>" in text and "tiny-random-llama" in text
