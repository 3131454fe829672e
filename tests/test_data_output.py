"""Image-folder loading (formats, modes, sizes) and the safe, atomic output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanitize.data.images import load_image_folder, load_reserve
from sanitize.errors import SanitizeError
from sanitize.output import (
    OUTPUT_MARKER,
    check_out_dir,
    claim_out_dir,
    mark_output,
    staged_output,
    write_image_subset,
)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_formats_modes_and_sizes_load(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for i, suffix in enumerate(["png", "jpg", "jpeg", "bmp", "ppm", "webp"]):
        save(tmp_path / "a" / f"{i}.{suffix}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    save(tmp_path / "b" / "gray.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    save(tmp_path / "b" / "large.png", rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"ignored")
    data = load_image_folder(tmp_path)
    assert data.classes == ["a", "b"]
    assert data.images.shape == (8, 3, 16, 16)
    assert data.class_counts().tolist() == [6, 2]
    assert any("resized to the most common" in n for n in data.notes)
    assert any("converted to RGB" in n for n in data.notes)
    assert "b/large.png" in data.paths
    # PNG survives bit-exactly
    original = np.asarray(Image.open(tmp_path / "a" / "0.png"))
    assert np.array_equal(data.images[data.paths.index("a/0.png")].permute(1, 2, 0).numpy(), original)


def test_grayscale_set_stays_single_channel_and_size_option(tmp_path) -> None:
    for i in range(4):
        save(tmp_path / str(i % 2) / f"{i}.png", np.full((10, 10), 60 * i, np.uint8))
    data = load_image_folder(tmp_path, size=8)
    assert data.images.shape == (4, 1, 8, 8)


def test_reserve_maps_classes_by_name(tmp_path) -> None:
    for name in ["cat", "dog", "emu"]:
        save(tmp_path / "data" / name / "x.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "reserve" / "emu" / "y.png", np.zeros((12, 12), np.uint8))
    data = load_image_folder(tmp_path / "data")
    reserve = load_reserve(tmp_path / "reserve", data)
    assert reserve.labels.tolist() == [2] and reserve.size == (8, 8)
    save(tmp_path / "reserve" / "owl" / "z.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SanitizeError, match="owl"):
        load_reserve(tmp_path / "reserve", data)


def test_out_dir_rules(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SanitizeError, match="inside the input"):
        check_out_dir(data / "out", [data], force=True)
    with pytest.raises(SanitizeError, match="contains the input"):
        check_out_dir(tmp_path, [data], force=True)
    (tmp_path / "out").mkdir()
    with pytest.raises(SanitizeError, match="already exists"):
        check_out_dir(tmp_path / "out", [data], force=False)
    assert check_out_dir(tmp_path / "out", [data], force=True) == (tmp_path / "out").resolve()


def test_staged_output_is_atomic(tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as staging:
        (staging / "half.txt").write_text("partial")
        raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.mkdir()
    mark_output(out)
    (out / "old.txt").write_text("old")
    with staged_output(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_force_replaces_only_a_folder_sanitize_wrote(tmp_path) -> None:
    """A mistyped --out with --force cannot delete the user's own folder: only a marked or empty one."""
    data = tmp_path / "data"
    data.mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(SanitizeError, match="not written by sanitize.*even with --force"):
        check_out_dir(mine, [data], force=True)
    with pytest.raises(SanitizeError, match="not written by sanitize"):
        check_out_dir(mine, [data], force=False)
    with staged_output(tmp_path / "out") as staging:
        (staging / "report.json").write_text("{}")
    assert json.loads((tmp_path / "out" / OUTPUT_MARKER).read_text())["written_by"] == "sanitize"
    assert check_out_dir(tmp_path / "out", [data], force=True) == (tmp_path / "out").resolve()
    # replaced meanwhile by a folder sanitize did not write: left alone even with --force
    with pytest.raises(SanitizeError, match="no longer a folder sanitize wrote"), \
            staged_output(tmp_path / "out", force=True) as staging:
        (staging / "report.json").write_text("{}")
        (tmp_path / "out" / OUTPUT_MARKER).unlink()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_second_run_to_a_locked_out_is_refused_at_once(tmp_path) -> None:
    """Two runs to one --out: the second is refused before any work instead of replacing the first."""
    data = tmp_path / "data"
    data.mkdir()
    with claim_out_dir(tmp_path / "out", [data], force=False) as out:
        busy = rf"another sanitize run \(pid {os.getpid()}\) is writing it"
        with pytest.raises(SanitizeError, match=busy), claim_out_dir(tmp_path / "out", [data], force=False):
            pass
        with staged_output(out) as staging:
            (staging / "report.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]  # the lock file is gone
    with claim_out_dir(tmp_path / "out", [data], force=True):  # and the lock is free again
        pass


def test_cleaned_files_are_hard_links(tmp_path) -> None:
    save(tmp_path / "data" / "a" / "x.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "data" / "b" / "y.png", np.ones((8, 8), np.uint8))
    data = load_image_folder(tmp_path / "data")
    write_image_subset(data, [0], tmp_path / "clean")
    assert (tmp_path / "clean" / "b").is_dir() and not list((tmp_path / "clean" / "b").iterdir())
    assert os.stat(tmp_path / "clean" / "a" / "x.png").st_ino == os.stat(tmp_path / "data" / "a" / "x.png").st_ino


def test_an_out_that_appears_during_the_run_is_left_alone(tmp_path) -> None:
    """A second run (or the user) creating --out meanwhile keeps it; this run's results go beside it."""
    out = tmp_path / "out"
    with pytest.raises(SanitizeError, match="appeared while this run was going"), staged_output(out) as staging:
        (staging / "report.json").write_text("{}")
        out.mkdir()
        (out / "mine.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.sanitize-")]
    assert len(kept) == 1 and (kept[0] / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    with pytest.raises(SanitizeError, match="no longer a folder sanitize wrote"), \
            staged_output(out, force=True) as staging:  # not even --force replaces what the user made
        (staging / "report.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("out.sanitize-")]) == 2


def test_an_out_that_cannot_be_staged_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(SanitizeError, match="cannot write in"):
        check_out_dir(tmp_path / ("x" * 250), [], force=False)  # the staging name exceeds the limit
    assert list(tmp_path.iterdir()) == []


def test_out_follows_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "out") as staging:
            (staging / "report.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700


def test_an_unreadable_class_folder_stops_the_run(tmp_path, monkeypatch) -> None:
    save(tmp_path / "data" / "a" / "x.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "data" / "b" / "y.png", np.ones((8, 8), np.uint8))
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "b":  # as if its permissions forbade reading it (root ignores chmod)
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SanitizeError, match="b: cannot read folder"):
        load_image_folder(tmp_path / "data")
