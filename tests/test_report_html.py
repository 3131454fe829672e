"""report.html and the report schema: built from real runs, checked in a real headless browser.

Structure tests use the deterministic detector double of tests/test_cli_gate.py (no training);
one test runs the real CT detector through the CLI. The browser tests need Debian's ``chromium``
and skip, saying so, where it is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanitize.attacks import badnet
from sanitize.cli.common import run_detector
from sanitize.data import examples
from sanitize.pipeline import RunOptions
from sanitize.report.evidence import class_threshold, difference_stats, feature_contrast, recovered_trigger
from sanitize.report.html import build_html, write_html_report
from sanitize.result import DetectionResult

from .conftest import assert_valid_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless browser test: chromium is not installed "
                                                              "(Debian: apt-get install -y chromium)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0")


class _Page(HTMLParser):
    """Element ids, resource URLs and per-grid image counts of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.grid_images: dict[str, int] = {}
        self._grid: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if a.get("id"):
            self.ids.append(a["id"])
        self.urls += [v for k, v in attrs if k in ("src", "href", "srcset", "action", "data") and v]
        if tag == "div" and a.get("id", "").endswith("-grid"):
            self._grid, self._depth = a["id"], 0
            self.grid_images[self._grid] = 0
        elif tag == "div" and self._grid:
            self._depth += 1
        if tag == "img" and self._grid:
            self.grid_images[self._grid] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._grid:
            if self._depth == 0:
                self._grid = None
            else:
                self._depth -= 1


def parse(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


def render(html_file: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Open ``html_file`` in headless chromium with a fresh profile; stdout = DOM or nothing."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra,
                           html_file.resolve().as_uri()], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """Lines chromium logs for the page's console (errors, CSP violations, failed loads)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def assert_self_contained(page: _Page) -> None:
    """Nothing the page references lives outside it: images are data URIs, links are anchors."""
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    outside = [u for u in page.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert not outside, outside


def flag_paths(truth: set[str], suspected: list[int]):
    """The detector double: flags exactly ``truth``, scores flagged samples above all others."""
    def detect(data, reserve, progress) -> DetectionResult:
        flagged = np.array([p in truth for p in data.paths])
        rank = np.random.default_rng(0).random(len(flagged))
        return DetectionResult("double", scores=np.where(flagged, 1 + rank, rank), flagged=flagged,
                               suspected_classes=suspected, timings={"detect": 0.01},
                               class_stats=[{"class": c, "n_samples": int((data.labels == c).sum()),
                                             "suspected": c in suspected} for c in range(data.num_classes)])
    return detect


@pytest.fixture(scope="module")
def double_out(digits_folders, tmp_path_factory) -> Path:
    data, reserve, truth = digits_folders
    out = tmp_path_factory.mktemp("double") / "out"
    assert run_detector(flag_paths(truth, [0]), data, reserve, RunOptions(out, quiet=True)) == 1
    return out


def test_double_report_follows_schema_and_page_has_every_section(double_out, digits_folders) -> None:
    _, _, truth = digits_folders
    report = json.loads((double_out / "report.json").read_text())
    assert_valid_report(report)
    page = parse((double_out / "report.html").read_text(encoding="utf-8"))
    n_classes = len({s["label"] for s in report["samples"]})
    expected = {"summary", "classes", "histograms", "samples", "flagged-grid", "kept-grid", "triggers", "trigger-0",
                *(f"hist-{i}" for i in range(n_classes))}
    assert expected <= set(page.ids), expected - set(page.ids)
    assert "features" not in page.ids  # image data: no feature table
    assert len(page.ids) == len(set(page.ids)), "ids must be unique"
    assert page.grid_images == {"flagged-grid": min(24, len(truth)), "kept-grid": 8}
    assert_self_contained(page)


def test_page_lists_top_flagged_by_score_and_reads_back_from_disk(double_out) -> None:
    """The builder needs only the report dict and the pixels: a report read back from disk works."""
    from sanitize.data.images import load_image_folder

    report = json.loads((double_out / "report.json").read_text())
    data = load_image_folder(report["summary"]["input"])
    text = build_html(report, data.images.numpy(), top_k=5)
    ranked = sorted((s for s in report["samples"] if s["flagged"]), key=lambda s: -s["score"])
    grid = text.split('id="flagged-grid"', 1)[1].split('id="kept-grid"', 1)[0]
    shown = [grid.split(f'alt="{s["path"]}"')[0].count("<img") for s in ranked[:5]]
    assert shown == sorted(shown) and len(set(shown)) == 5  # in score order
    assert ranked[5]["path"] not in grid
    assert "failed" in text.split('id="summary"', 1)[1].split("</section>", 1)[0]  # the gate verdict


def test_no_html_option(digits_folders, tmp_path) -> None:
    data, reserve, truth = digits_folders
    run_detector(flag_paths(truth, [0]), data, reserve, RunOptions(tmp_path / "o", quiet=True, html=False))
    assert (tmp_path / "o" / "report.json").exists() and not (tmp_path / "o" / "report.html").exists()


def test_class_threshold_prefers_what_the_detector_reports() -> None:
    samples = [{"path": f"{c}/{i}", "label": c, "score": s, "flagged": s > 0.5}
               for c, scores in (("a", [0.1, 0.6, 0.9]), ("b", [0.2, 0.3])) for i, s in enumerate(scores)]
    report = {"summary": {"settings": {}}, "classes": [], "samples": samples}
    assert class_threshold(report, "a") == (0.6, "lowest flagged score")
    assert class_threshold(report, "b") == (None, "nothing flagged")
    report["summary"]["settings"] = {"threshold": 0.55}
    assert class_threshold(report, "b") == (0.55, "reported by the detector")
    report["classes"] = [{"name": "a", "threshold": 0.7}]
    assert class_threshold(report, "a") == (0.7, "reported by the detector")


def test_recovered_trigger_locates_the_badnet_patch() -> None:
    """With the true poison flagged, the contrast peaks inside the pixels the attack changed."""
    clean = examples.digits()
    poisoned = badnet(clean, 0.05, target=0, seed=3)
    images = poisoned.dataset.images.numpy()
    changed = (images != clean.images.numpy())[poisoned.poison_indices].any(axis=(0, 1))  # H x W
    flagged = np.zeros(len(images), dtype=bool)
    flagged[poisoned.poison_indices] = True
    views = recovered_trigger(images, poisoned.dataset.labels.numpy(), flagged, target=0)
    diff = np.abs(views["vs_others"]).max(0)
    peak = np.unravel_index(diff.argmax(), diff.shape)
    assert changed[peak], (peak, changed)
    level, spread = difference_stats(views["vs_others"])
    assert level > 100 and spread <= changed.mean() + 0.05  # concentrated on the patch
    nothing = recovered_trigger(images, poisoned.dataset.labels.numpy(), np.zeros(len(images), bool), 0)
    assert nothing["vs_others"] is None and nothing["vs_same"] is None


def test_feature_contrast_ranks_the_trigger_features_first(tmp_path) -> None:
    """A feature-space backdoor (two features set to fixed values on the poison rows) is found."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 50)).astype(np.float32)
    x[:, 40] = 3.0  # constant column: no effect, not listed
    flagged = np.zeros(800, dtype=bool)
    flagged[rng.choice(800, 40, replace=False)] = True
    x[flagged, 7], x[flagged, 23] = 5.0, -4.0
    names = [f"feat_{j}" for j in range(50)]
    rows = feature_contrast(x, names, flagged)
    assert [r["feature"] for r in rows[:2]] in (["feat_7", "feat_23"], ["feat_23", "feat_7"])
    assert rows[0]["mean_flagged"] in (5.0, -4.0) and abs(rows[2]["effect"]) < 1
    assert "feat_40" not in {r["feature"] for r in rows}
    assert all(np.isfinite(r["effect"]) for r in rows)
    assert feature_contrast(x, None, np.zeros(800, bool)) == []
    with pytest.raises(ValueError):
        feature_contrast(x, names[:3], flagged)

    report = {"schema_version": 1, "classes": [], "samples": [
        {"path": f"row{i}", "label": "malicious" if i % 2 else "benign", "score": float(f), "flagged": bool(f)}
        for i, f in enumerate(flagged)],
        "summary": {"method": "double", "n_samples": 800, "n_flagged": 40, "flagged_fraction": 0.05,
                    "suspected_classes": [], "seconds": 0.0, "seed": 0, "device": "cpu"}}
    page = parse(write_html_report(report, tmp_path, features=x, feature_names=names).read_text())
    assert {"summary", "histograms", "features"} <= set(page.ids)
    assert not {"samples", "triggers"} & set(page.ids)  # no pixels, no thumbnails
    assert "feat_7" in (tmp_path / "report.html").read_text()


@needs_chromium
def test_console_check_catches_errors(tmp_path) -> None:
    """Negative control: the console check below does see script errors and blocked fetches."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
                   '\'none\'; script-src \'unsafe-inline\'"></head><body><script>console.error("boom")</script>'
                   '<img src="http://192.0.2.1/x.png"></body></html>')
    messages = console_messages(render(bad, tmp_path, "--dump-dom").stderr)
    assert any("boom" in m for m in messages) and any("192.0.2.1" in m for m in messages), messages


@needs_chromium
def test_double_report_renders_in_chromium(double_out, tmp_path) -> None:
    proc = render(double_out / "report.html", tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not console_messages(proc.stderr)
    page = parse(proc.stdout)
    assert {"summary", "histograms", "flagged-grid", "kept-grid", "trigger-0"} <= set(page.ids)


@pytest.fixture(scope="module")
def ct_out(ct_digits_run) -> Path:
    """The shared real CT run through the CLI on the poisoned digits (conftest.ct_digits_run)."""
    out, code, _ = ct_digits_run
    assert code in (0, 1)
    return out


def test_real_ct_report_follows_schema(ct_out, digits_folders) -> None:
    _, _, truth = digits_folders
    report = json.loads((ct_out / "report.json").read_text())
    assert_valid_report(report)
    flagged = {s["path"] for s in report["samples"] if s["flagged"]}
    assert len(flagged & truth) >= 0.9 * len(truth)  # a real detection, not an empty report
    assert report["summary"]["suspected_classes"] == ["0"]


@needs_chromium
def test_real_ct_report_renders_in_chromium(ct_out, tmp_path) -> None:
    report = json.loads((ct_out / "report.json").read_text())
    html_file = ct_out / "report.html"
    proc = render(html_file, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not console_messages(proc.stderr), console_messages(proc.stderr)
    page = parse(proc.stdout)
    n_classes = len(report["classes"])
    assert {"summary", "classes", "histograms", "samples", "triggers", "trigger-0",
            *(f"hist-{i}" for i in range(n_classes))} <= set(page.ids)
    assert page.grid_images["flagged-grid"] == min(24, report["summary"]["n_flagged"])
    assert_self_contained(parse(html_file.read_text(encoding="utf-8")))

    shot = tmp_path / "report.png"
    proc = render(html_file, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert proc.returncode == 0 and not console_messages(proc.stderr)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    reds = ((pixels[..., 0] > 180) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)).sum()
    assert reds > 500  # the flagged bars and thumbnail borders were painted
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a rendered page, not a blank one
