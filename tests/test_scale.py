"""Large data: the on-disk decode cache and streaming the images to the device a batch at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sanitize.data.decode_cache as decode_cache
from sanitize import asset, ct
from sanitize.attacks import badnet
from sanitize.data.decode_cache import DecodeCache
from sanitize.data.images import load_image_folder, load_reserve
from sanitize.errors import SanitizeError
from sanitize.nn.samples import Samples, concat_rows, prefetched, stream_images, take_rows

from .conftest import digits_split, run_cli, tree_digest
from .test_asset import tiny as tiny_asset
from .test_ct import tiny_schedule as tiny_ct


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes of random colour images, most 12x12 and every seventh 15x15 (so one is resized)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(40):
            side = 15 if i % 7 == 0 else 12
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i:03d}.png")
    return root


def entries(cache: DecodeCache) -> list[Path]:
    return sorted(p for p in cache.root.iterdir()) if cache.root.is_dir() else []


def test_decoded_once_then_mapped(folder: Path, tmp_path: Path, monkeypatch) -> None:
    cache = DecodeCache(tmp_path / "cache", "on")
    in_memory = load_image_folder(folder)
    first = load_image_folder(folder, cache=cache)
    assert torch.equal(first.images, in_memory.images) and torch.equal(first.labels, in_memory.labels)
    assert first.paths == in_memory.paths and first.notes[:-1] == in_memory.notes
    assert "kept in the decode cache" in first.notes[-1]
    (entry,) = entries(cache)
    assert np.load(entry / "images.npy", mmap_mode="r").shape == (120, 3, 12, 12)

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode_cache, "_decode_parallel", no_decoding)
    again = load_image_folder(folder, cache=cache)
    assert torch.equal(again.images, in_memory.images) and "mapped from the decode cache" in again.notes[-1]
    again.images[0] += 1  # copy-on-write: the cached file never changes
    assert torch.equal(load_image_folder(folder, cache=cache).images, in_memory.images)

    monkeypatch.undo()
    path = folder / "c1" / "005.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched: decoded again
    touched = load_image_folder(folder, cache=cache)
    assert "kept in the decode cache" in touched.notes[-1]
    assert entries(cache) != [entry] and len(entries(cache)) == 1  # the stale entry is gone


def test_worker_processes_give_the_same_pixels(folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(decode_cache, "PROCESS_MIN_IMAGES", 0)
    monkeypatch.setattr(decode_cache, "CHUNK", 16)
    mapped = load_image_folder(folder, cache=DecodeCache(tmp_path / "cache", "on"))
    assert torch.equal(mapped.images, load_image_folder(folder).images)


def test_the_reserve_is_decoded_like_the_data(folder: Path, tmp_path: Path) -> None:
    cache = DecodeCache(tmp_path / "cache", "on")
    data = load_image_folder(folder, size=10, cache=cache)
    reserve = load_reserve(folder, data, cache=cache)
    assert reserve.size == data.size == (10, 10) and torch.equal(reserve.images, data.images)
    assert len(entries(cache)) == 2  # the same folder at another request is another entry, not a stale one


def test_a_failed_decode_leaves_no_entry(folder: Path, tmp_path: Path) -> None:
    (folder / "c2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    cache = DecodeCache(tmp_path / "cache", "on")
    with pytest.raises(SanitizeError, match="broken.png"):
        load_image_folder(folder, cache=cache)
    assert list(cache.root.iterdir()) == []  # neither an entry nor a staging folder


def test_a_cache_dir_that_cannot_be_written_is_one_line_exit_2(digits_folders, tmp_path, capsys) -> None:
    data, reserve, _ = digits_folders
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    before = tree_digest(data)
    code = run_cli("ct", data, "--reserve", reserve, "--out", tmp_path / "out", "--device", "cpu", "--quiet",
                   "--decode-cache", "on", "--cache-dir", blocker)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--cache-dir" in err[0] and "cannot write the decode cache" in err[0]
    assert tree_digest(data) == before and not (tmp_path / "out").exists()


def test_auto_caches_large_folders_only(folder: Path, tmp_path: Path, monkeypatch) -> None:
    cache = DecodeCache(tmp_path / "cache")
    load_image_folder(folder, cache=cache)
    assert entries(cache) == []
    monkeypatch.setattr(decode_cache, "AUTO_MIN_IMAGES", 100)
    load_image_folder(folder, cache=cache)
    assert len(entries(cache)) == 1
    with pytest.raises(SanitizeError, match="decode_cache"):
        DecodeCache(mode="always")


def test_samples_views_gather_what_tensors_would() -> None:
    a, b = torch.arange(40).view(10, 4), torch.arange(100, 124).view(6, 4)
    joined = concat_rows(stream_images(a, "cpu"), b)
    whole = torch.cat([a, b])
    assert joined.streamed and joined.shape == whole.shape and len(joined) == 16
    idx = torch.tensor([15, 0, 9, 10, 3])
    assert torch.equal(joined[idx], whole[idx]) and torch.equal(joined[2:13], whole[2:13])
    subset = torch.tensor([1, 4, 9, 11, 15])
    assert torch.equal(take_rows(joined, subset)[:], whole[subset])
    with pytest.raises(ValueError, match="increasing"):
        joined.take(torch.tensor([12, 3]))
    batches = [torch.tensor([3, 1]), torch.tensor([0, 15, 2]), torch.tensor([7])]
    assert [(i.tolist(), x.tolist()) for i, x in prefetched(joined, batches)] == \
        [(i.tolist(), whole[i].tolist()) for i in batches]
    assert isinstance(take_rows(a, subset[:3]), torch.Tensor) and not isinstance(joined, torch.Tensor)


def test_auto_never_streams_on_the_cpu() -> None:
    data, _ = digits_split(0)
    assert not data.to("cpu", stream=None).streamed
    streamed = data.to("cpu", stream=True)
    assert streamed.streamed and isinstance(streamed.images, Samples)
    assert torch.equal(streamed.subset([5, 2, 9]).images[:], data.images[[5, 2, 9]])
    assert not streamed.to("cpu", stream=False).streamed  # materialised again


@pytest.mark.parametrize("detector", ["ct", "asset"])
def test_streamed_and_resident_runs_flag_the_same(detector: str) -> None:
    data, reserve = digits_split(0)
    poisoned = badnet(data, 0.05, target=0, seed=0).dataset
    if detector == "ct":
        def run(stream):
            return ct(poisoned, reserve, schedule=tiny_ct(), device="cpu", seed=0, stream=stream)
    else:
        def run(stream):
            return asset(poisoned, reserve, schedule=tiny_asset(), device="cpu", seed=0, stream=stream)
    resident, streamed = run(False), run(True)
    assert streamed.settings["streamed"] and not resident.settings["streamed"]
    assert np.array_equal(resident.flagged, streamed.flagged)
    assert np.array_equal(resident.scores, streamed.scores)


def test_stream_is_checked_before_any_work() -> None:
    with pytest.raises(SanitizeError, match="stream"):
        ct(*digits_split(0), stream="yes")
    with pytest.raises(SanitizeError, match="supervised"):
        asset(*digits_split(0), stream=True, paradigm="self-supervised")


def test_cli_streamed_from_the_cache_matches_the_resident_run(digits_folders, ct_digits_run, tmp_path) -> None:
    """The poisoned digits folder through ``ct --stream --decode-cache on``: decoded to the cache,
    mapped, streamed, and the same flags as the shared resident run (same seed, CPU)."""
    data, reserve, _ = digits_folders
    resident_out, resident_code, _ = ct_digits_run
    before = tree_digest(data)
    out, cache = tmp_path / "cleaned", tmp_path / "cache"
    code = run_cli("ct", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--quiet", "--stream",
                   "--decode-cache", "on", "--cache-dir", cache)
    assert tree_digest(data) == before and code == resident_code
    report = json.loads((out / "report.json").read_text())
    resident = json.loads((resident_out / "report.json").read_text())
    assert report["summary"]["settings"]["streamed"] is True
    assert [s["flagged"] for s in report["samples"]] == [s["flagged"] for s in resident["samples"]]
    assert len(list((cache / "decoded").iterdir())) == 2  # the data and the reserve
    assert any("decode cache" in note for note in report["summary"]["notes"])
