"""One contract, checked over every registered detector and every data kind (scikit-learn's
``parametrize_with_checks`` idea): a detector added to the registry is tested here with no test
of its own.

For each detector: it builds with its defaults, refuses an unknown setting naming it, and on each
data kind either returns a :class:`DetectionResult` that makes a valid report (one score per
sample, boolean flags, suspected classes among the data's) or refuses with a one-line
:class:`SanitizeError`: never another exception, which the command line would turn into exit 3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sanitize.data import examples
from sanitize.data.rows import FeatureDataset
from sanitize.detectors import available_detectors, data_kinds, get_detector
from sanitize.errors import ParameterError, SanitizeError
from sanitize.report.build import build_report
from sanitize.result import DetectionResult

from .conftest import assert_valid_report

DETECTORS = available_detectors()


def _feature_rows() -> tuple[FeatureDataset, FeatureDataset]:
    """300 rows of 16 features in two classes, and a held-out reserve of 60."""
    x = torch.randn(360, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(360) % 2
    rows = FeatureDataset(x[:300], y[:300], ["benign", "malicious"], [f"r{i}" for i in range(300)])
    reserve = FeatureDataset(x[300:].clone(), y[300:].clone(), ["benign", "malicious"], [f"s{i}" for i in range(60)])
    return rows, reserve


@pytest.fixture(scope="module")
def kinds() -> dict:
    """Each data kind a detector may be given: (data, reserve)."""
    data, reserve = examples.split_reserve(examples.digits().subset(range(400)), 0.25, seed=0)
    return {"images": (data, reserve), "feature rows": _feature_rows()}


@pytest.fixture(scope="module")
def outcomes(kinds) -> dict:
    """Every detector run once on every kind: the result, or the SanitizeError it refused with."""
    found = {}
    for name in DETECTORS:
        for kind, (data, reserve) in kinds.items():
            try:
                found[name, kind] = get_detector(name, device="cpu", seed=0).detect(data, reserve)
            except SanitizeError as exc:
                found[name, kind] = exc
    return found


@pytest.mark.parametrize("name", DETECTORS)
def test_builds_with_defaults_and_names_an_unknown_setting(name: str) -> None:
    get_detector(name)
    with pytest.raises(TypeError, match="no_such_setting"):
        get_detector(name, no_such_setting=1)


@pytest.mark.parametrize("kind", ["images", "feature rows"])
@pytest.mark.parametrize("name", DETECTORS)
def test_result_or_one_line_refusal(outcomes, kinds, name: str, kind: str) -> None:
    outcome = outcomes[name, kind]
    data, _ = kinds[kind]
    if isinstance(outcome, SanitizeError):
        assert str(outcome).strip() and "\n" not in str(outcome), outcome
        assert kind not in data_kinds(name), f"{name} is registered for {kind} but refused it: {outcome}"
        return
    assert kind in data_kinds(name), f"{name} read {kind}, which the registry says it does not"
    assert isinstance(outcome, DetectionResult)
    assert outcome.scores.shape == outcome.flagged.shape == (len(data),)
    assert outcome.flagged.dtype == bool and np.isfinite(outcome.scores).all()
    assert all(0 <= c < len(data.classes) for c in outcome.suspected_classes)
    json.dumps(outcome.settings)  # recorded in report.json as is
    assert_valid_report(build_report(data, outcome))


def test_feature_rows_are_read_by_the_proactive_detectors(outcomes) -> None:
    """CT and ASSET inspect EMBER-style rows; the passive baselines say they do not."""
    assert available_detectors("feature rows") == ["asset", "ct"]
    assert available_detectors("images") == DETECTORS
    for name in DETECTORS:
        refused = isinstance(outcomes[name, "feature rows"], SanitizeError)
        assert refused == (name not in ("ct", "asset")), name
        if refused:
            assert "for feature rows use asset or ct" in str(outcomes[name, "feature rows"])


@pytest.mark.parametrize("name", ["ct", "asset"])
def test_the_feature_row_network_is_refused_on_images(kinds, name: str) -> None:
    """The library refuses what the command line refuses (``--arch ember_mlp`` on an image folder)."""
    data, reserve = kinds["images"]
    with pytest.raises(SanitizeError, match="ember_mlp is the feature-row network"):
        get_detector(name, arch="ember_mlp", device="cpu").detect(data, reserve)


@pytest.mark.parametrize("name", DETECTORS)
def test_a_reserve_of_the_other_kind_is_one_line(kinds, name: str) -> None:
    """Images inspected against a reserve of feature rows: refused in one line, before any training."""
    data, _ = kinds["images"]
    _, rows = kinds["feature rows"]
    with pytest.raises(SanitizeError, match="same kind of data"):
        get_detector(name, device="cpu").detect(data, rows)


def test_a_bad_parameter_is_a_value_error_for_python_callers(kinds) -> None:
    """As in scikit-learn: Python code may catch ValueError; the command line sees a SanitizeError."""
    data, reserve = kinds["images"]
    with pytest.raises(ValueError, match="alpha"):
        get_detector("ct", alpha=2.0, device="cpu").detect(data, reserve)


@pytest.mark.parametrize("name", DETECTORS)
def test_settings_are_checked_in_one_place_before_any_data(name: str) -> None:
    """``check()`` validates every detector's settings, naming the Python parameter (scikit-learn's
    convention); ``detect`` calls it first, so a bad seed costs no loading or training."""
    get_detector(name).check()
    for setting in ({"seed": -1}, {"arch": "no-such-net"}):
        with pytest.raises(ParameterError) as caught:
            get_detector(name, device="cpu", **setting).detect(None, None)
        assert caught.value.parameter == next(iter(setting)), (name, caught.value)
