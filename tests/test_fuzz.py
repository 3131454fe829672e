"""The hostile-user corpus: every bad or odd input, option and output place, one contract.

For every case the command line (run in-process, so the corpus costs seconds) must exit 2 with
exactly one ``error:`` line on stderr and no traceback, leave every input byte-identical, create
no ``--out`` and leave no hidden staging folder or lock file behind. Most cases fail before any
training; the few that need a valid set use 200 digits. Signals and crashes have their own tests
(``test_exits.py``); the subprocess path of the detector commands is checked in
``conftest.assert_bad_inputs_exit_2``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from sanitize.data import examples
from sanitize.output import OUTPUT_MARKER, output_lock, write_image_subset

from .conftest import run_cli, tree_digest


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with a few bytes of data (a
    decompression bomb: Pillow raises an error that is not an ``OSError``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _digits_folder(root: Path, name: str, indices) -> Path:
    digits = examples.digits()
    write_image_subset(digits, np.asarray(indices), root / name)
    return root / name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every input the cases read, in one tree whose digest must never change."""
    root = tmp_path_factory.mktemp("fuzz")
    labels = examples.digits().labels.numpy()
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    _digits_folder(root, "data", np.concatenate([i[:20] for i in by_class]))
    _digits_folder(root, "reserve", np.concatenate([i[20:30] for i in by_class]))
    _digits_folder(root, "tiny", np.concatenate([i[:4] for i in by_class]))
    _digits_folder(root, "one-class", by_class[0][:120])
    (root / "empty" / "a").mkdir(parents=True)
    for name in ("0", "1"):
        (root / "not-images" / name).mkdir(parents=True)
        (root / "not-images" / name / "readme.txt").write_text("no pictures here")
    for name, payload in (("corrupt", b"\x89PNG\r\n\x1a\nnot really a png"), ("zero-byte", b""),
                          ("bomb", forged_png(20000, 20000))):
        _digits_folder(root, name, np.concatenate([i[:12] for i in by_class]))
        (root / name / "3" / "odd.png").write_bytes(payload)
    unknown = _digits_folder(root, "unknown-reserve", np.concatenate([i[20:25] for i in by_class]))
    (unknown / "cat").mkdir()
    (unknown / "cat" / "x.png").write_bytes((unknown / "0" / sorted(os.listdir(unknown / "0"))[0]).read_bytes())
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("years of work")
    (root / "a-file.txt").write_text("not a folder")
    (root / "bomb-trigger.png").write_bytes(forged_png(20000, 20000))
    (root / "binary-report").mkdir()
    (root / "binary-report" / "report.json").write_bytes(bytes(range(256)) * 4)
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "truth.json").write_text(json.dumps({"poison": []}))
    rows = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
    np.savez(root / "nan.npz", X=np.where(np.arange(8) == 3, np.nan, rows), y=np.arange(120) % 2)
    np.savez(root / "huge-label.npz", X=rows, y=np.where(np.arange(120) == 0, 1e9, np.arange(120) % 2))
    (root / "rows.jsonl").write_text('{"sha256": "a", "label": 0}\n{not json\n')
    return root


def _cases(root: Path, out: Path) -> dict[str, list]:
    """name -> argv; ``out`` is a path that must still not exist afterwards."""
    data, reserve = root / "data", root / "reserve"
    ct = ["ct", data, "--reserve", reserve, "--device", "cpu"]
    asset = ["asset", data, "--reserve", reserve, "--device", "cpu"]
    return {
        # inputs that cannot be read or inspected
        "missing data": ["ct", root / "nope", "--reserve", reserve, "--out", out],
        "empty folder": ["ct", root / "empty", "--reserve", reserve, "--out", out],
        "no images": ["ct", root / "not-images", "--reserve", reserve, "--out", out],
        "corrupt image": ["ct", root / "corrupt", "--reserve", reserve, "--out", out],
        "zero-byte image": ["asset", root / "zero-byte", "--reserve", reserve, "--out", out],
        "decompression bomb": ["ct", root / "bomb", "--reserve", reserve, "--out", out],
        "bomb in the reserve": ["ct", data, "--reserve", root / "bomb", "--out", out],
        "too few images": ["ct", root / "tiny", "--reserve", reserve, "--out", out],
        "one class": ["ct", root / "one-class", "--reserve", reserve, "--out", out],
        "one class (asset)": ["asset", root / "one-class", "--reserve", reserve, "--out", out],
        "reserve with an unknown class": ["ct", data, "--reserve", root / "unknown-reserve", "--out", out],
        "reserve missing": ["ct", data, "--reserve", root / "nope", "--out", out],
        "feature rows with NaN": ["ct", root / "nan.npz", "--reserve", root / "nan.npz", "--out", out],
        "label 1e9": ["ct", root / "huge-label.npz", "--reserve", root / "huge-label.npz", "--out", out],
        "broken jsonl": ["asset", root / "rows.jsonl", "--reserve", root / "rows.jsonl", "--out", out],
        # option domains
        "seed -1": [*ct, "--out", out, "--seed", "-1"],
        "seed beyond 64 bits": [*ct, "--out", out, "--seed", str(2 ** 64)],
        "device tpu": [*ct, "--out", out, "--device", "tpu"],
        "device cuda:abc": [*ct, "--out", out, "--device", "cuda:abc"],
        "epsilon nan": [*asset, "--out", out, "--epsilon", "nan"],
        "epsilon 0": [*asset, "--out", out, "--epsilon", "0"],
        "epsilon -1": [*asset, "--out", out, "--epsilon", "-1"],
        "max flagged fraction 2": [*ct, "--out", out, "--max-flagged-fraction", "2"],
        "size 0": [*ct, "--out", out, "--size", "0"],
        "size abc": [*ct, "--out", out, "--size", "abc"],
        "unknown input format": [*ct, "--out", out, "--input-format", "bogus"],
        "unknown input format (old flag)": [*ct, "--out", out, "--format", "bogus"],
        "input format given twice": [*ct, "--out", out, "--input-format", "npz", "--format", "jsonl"],
        "attack: out given twice": ["attack", "badnet", data, out, "--out", out],
        "attack: no out": ["attack", "badnet", data],
        "unknown option": [*ct, "--out", out, "--bogus"],
        "unknown scan method": ["scan", "nope", data, "--reserve", reserve, "--out", out],
        # where the outputs go
        "out inside the input": [*ct, "--out", data / "0" / "o"],
        "out contains the input": [*ct, "--out", root, "--force"],
        "out is a file": [*ct, "--out", root / "a-file.txt", "--force"],
        "out is the user's folder, with --force": [*ct, "--out", root / "mine", "--force"],
        "out under a missing folder": [*ct, "--out", out / "deeper" / "o"],
        "out name too long": [*ct, "--out", out.parent / ("x" * 250)],
        # the other commands
        "attack: unknown": ["attack", "nope", data, out],
        "attack: rate nan": ["attack", "badnet", data, out, "--rate", "nan"],
        "attack: rate 1": ["attack", "blend", data, out, "--rate", "1"],
        "attack: target 99": ["attack", "badnet", data, out, "--target", "99"],
        "attack: trigger bomb": ["attack", "badnet", data, out, "--trigger", root / "bomb-trigger.png"],
        "attack: trigger size 0": ["attack", "ember-explanation", root / "nan.npz", out, "--trigger-size", "0"],
        "attack: trigger values on images": ["attack", "badnet", data, out, "--trigger-values", "beyond-range"],
        "attack: out is the user's folder": ["attack", "badnet", data, root / "mine", "--force"],
        "evaluate: binary report": ["evaluate", root / "binary-report", "--truth", root / "truth.json"],
        "evaluate: deep json": ["evaluate", root / "deep.json", "--truth", root / "truth.json"],
        "evaluate: json over the truth": ["evaluate", root / "binary-report", "--truth", root / "truth.json",
                                          "--json", root / "truth.json"],
        "features: out is a folder": ["features", root / "a-file.txt", "--out", root / "mine", "--force"],
        "demo: out is a file": ["demo", "--out", root / "a-file.txt"],
        "demo: rate nan": ["demo", "--out", out, "--rate", "nan"],
        "bench: target 99": ["bench", data, "--reserve", reserve, "--test", reserve, "--out", out,
                             "--target", "99", "--device", "cpu"],
        "bench: out is the user's folder": ["bench", data, "--reserve", reserve, "--test", reserve, "--out",
                                            root / "mine", "--device", "cpu"],
    }


CASES = sorted(_cases(Path("/r"), Path("/o")))
# What the line must say where the reason matters most (the minimum stated, the danger named).
MESSAGES = {
    "too few images": "ct (fast) needs at least 100",
    "one class": "only class 0",
    "one class (asset)": "only class 0",
    "decompression bomb": "decompression bomb",
    "bomb in the reserve": "decompression bomb",
    "attack: trigger bomb": "decompression bomb",
    "out is the user's folder, with --force": "not written by sanitize",
    "attack: out is the user's folder": "not written by sanitize",
    "bench: out is the user's folder": "not written by sanitize",
    "label 1e9": "at most 9999",
    # a bad value names the flag on the command line (the library names the parameter)
    "device cuda:abc": "--device 'cuda:abc'",
    "max flagged fraction 2": "--max-flagged-fraction 2",
    "size abc": "--size 'abc'",
    # the two below are refused by the command-line parser itself, whose wording varies by release
    "unknown input format": "'--input-format'",
    "attack: rate nan": "--rate nan",
    "attack: target 99": "--target 99",
    "attack: trigger size 0": "'--trigger-size'",
}


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.is_dir() for p in folder.iterdir()
            if ".staging-" in p.name or p.name.endswith(".sanitize-lock") or ".old-" in p.name]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(corpus, tmp_path, capsys, monkeypatch, case) -> None:
    monkeypatch.setenv("SANITIZE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = _cases(corpus, out)[case]
    before = tree_digest(corpus)
    code = run_cli(*argv, "-q")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (case, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (case, err)
    assert MESSAGES.get(case, "") in lines[0], (case, err)
    assert tree_digest(corpus) == before, case
    assert not out.exists() and not _leftovers(corpus, tmp_path), case
    assert not (corpus / "mine" / OUTPUT_MARKER).exists()


def test_a_second_run_to_a_busy_out_is_refused_before_any_work(corpus, tmp_path, capsys) -> None:
    """Two runs to one --out: while the first holds it, the second exits 2 at once."""
    out = tmp_path / "out"
    with output_lock(out):
        code = run_cli("attack", "badnet", corpus / "data", out, "-q")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: OUT_DIR") and "another sanitize run" in err
    assert not out.exists() and not _leftovers(tmp_path)
    assert run_cli("attack", "badnet", corpus / "data", out, "-q") == 0  # free again once the first ended


@pytest.mark.parametrize(("limit", "message"), [("40", "more than 40 pixels; set SANITIZE_MAX_IMAGE_PIXELS"),
                                                ("lots", "SANITIZE_MAX_IMAGE_PIXELS='lots': expected a positive")])
def test_the_image_size_limit_is_the_users_to_set(corpus, tmp_path, capsys, monkeypatch, limit, message) -> None:
    """8x8 digits are 64 pixels: a limit of 40 refuses them with the way to raise it."""
    monkeypatch.setenv("SANITIZE_MAX_IMAGE_PIXELS", limit)
    assert run_cli("attack", "badnet", corpus / "data", tmp_path / "out", "-q") == 2
    assert message in capsys.readouterr().err
    monkeypatch.setenv("SANITIZE_MAX_IMAGE_PIXELS", "64")
    assert run_cli("attack", "badnet", corpus / "data", tmp_path / "out", "-q") == 0


def test_the_old_format_flag_is_read_for_one_release() -> None:
    from sanitize.cli.common import InputFormat, input_format
    from sanitize.errors import SanitizeError

    assert input_format(InputFormat.auto, None) == "auto"
    assert input_format(InputFormat.npz, None) == input_format(InputFormat.auto, InputFormat.npz) == "npz"
    assert input_format(InputFormat.npz, InputFormat.npz) == "npz"
    with pytest.raises(SanitizeError, match="old name of --input-format"):
        input_format(InputFormat.npz, InputFormat.jsonl)


def test_the_input_format_choices_are_the_readers() -> None:
    """The command line lists the formats without importing the readers (torch); the lists agree."""
    from sanitize.cli.common import InputFormat
    from sanitize.data.rows import FORMATS

    assert tuple(f.value for f in InputFormat) == FORMATS


def test_the_listed_choices_are_the_librarys() -> None:
    """``--schedule`` and ``scan METHOD`` are listed in --help without importing torch; they must
    name exactly what the library accepts."""
    from sanitize.cli.common import AssetScheduleName, CTScheduleName, ScanMethod
    from sanitize.detectors import available_detectors
    from sanitize.detectors.asset.schedules import FEATURE_SCHEDULES
    from sanitize.detectors.asset.schedules import SCHEDULES as ASSET_SCHEDULES
    from sanitize.detectors.ct.rows import SCHEDULES as CT_FEATURE_SCHEDULES
    from sanitize.detectors.ct.schedules import SCHEDULES as CT_SCHEDULES

    assert [s.value for s in CTScheduleName] == list(CT_SCHEDULES)
    assert set(CT_FEATURE_SCHEDULES) <= set(CT_SCHEDULES)
    assert [s.value for s in AssetScheduleName] == list(ASSET_SCHEDULES) == list(FEATURE_SCHEDULES)
    assert sorted(m.value for m in ScanMethod) == sorted(set(available_detectors()) - {"ct", "asset"})


def test_a_bad_parameter_is_named_as_the_caller_named_it() -> None:
    """Python callers read the parameter (``alpha=2.0``), the command line the flag (``--alpha 2.0``)."""
    from sanitize import RunOptions
    from sanitize.detectors import get_detector
    from sanitize.errors import ParameterError

    with pytest.raises(ParameterError) as caught:
        get_detector("ct", alpha=2.0).check()
    assert str(caught.value).startswith("alpha=2.0: ") and caught.value.command_line().startswith("--alpha 2.0: ")
    with pytest.raises(ParameterError) as caught:
        RunOptions(out="o", format="bogus")
    assert str(caught.value).startswith("format='bogus': ")
    assert caught.value.command_line().startswith("--input-format 'bogus': ")
