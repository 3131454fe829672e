"""Inputs a detector cannot inspect are refused up front: one line, exit 2, nothing written, input untouched.

Sets too small or of one class (with the minimum stated), and image headers forged to claim
hundreds of millions of pixels (a decompression bomb: Pillow raises an error that is not an
``OSError``).
"""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest

from sanitize import examples
from sanitize.output import write_image_subset

from .conftest import run_cli, tree_digest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """45 digits of three classes, 60 of class 0 only, and a reserve of the three classes."""
    root = tmp_path_factory.mktemp("small")
    digits = examples.digits()
    labels = digits.labels.numpy()
    first = {c: np.flatnonzero(labels == c) for c in range(3)}
    write_image_subset(digits, np.concatenate([first[c][:15] for c in range(3)]), root / "tiny")
    write_image_subset(digits, first[0][:60], root / "one-class")
    write_image_subset(digits, np.concatenate([first[c][60:80] for c in range(3)]), root / "reserve")
    return root


@pytest.mark.parametrize(("command", "data", "message"), [
    ("ct", "tiny", "ct (fast) needs at least 100"),
    ("ct", "one-class", "only class 0"),
    ("asset", "one-class", "only class 0"),
])
def test_a_set_that_cannot_be_inspected_is_refused_before_training(folders, capsys, command: str, data: str,
                                                                   message: str) -> None:
    before = tree_digest(folders / data)
    code = run_cli(command, folders / data, "--reserve", folders / "reserve", "--out", folders / f"out-{command}",
                   "--device", "cpu", "-q")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert not (folders / f"out-{command}").exists() and tree_digest(folders / data) == before


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_a_decompression_bomb_header_is_one_line_not_a_crash(folders, capsys) -> None:
    bombed = folders / "bombed"
    shutil.copytree(folders / "tiny", bombed)
    (bombed / "0" / "bomb.png").write_bytes(forged_png(20000, 20000))
    (folders / "trigger.png").write_bytes(forged_png(20000, 20000))
    before = tree_digest(bombed)
    for args in (["ct", bombed, "--reserve", folders / "reserve", "--out", folders / "out-bomb"],
                 ["attack", "badnet", folders / "tiny", folders / "out-bomb", "--trigger", folders / "trigger.png"]):
        assert run_cli(*args, "-q") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "decompression bomb" in err
        assert not (folders / "out-bomb").exists()
    assert tree_digest(bombed) == before
