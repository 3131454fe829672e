"""Sets a detector cannot inspect are refused up front with their minimum: one line, exit 2, nothing written."""

from __future__ import annotations

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
