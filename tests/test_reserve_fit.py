"""A reserve that does not fit the data is refused before any training (sanitize.data.reserve_fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanitize import from_arrays
from sanitize.attacks import badnet
from sanitize.data import examples
from sanitize.data.reserve_fit import check_reserve_fit, fitted_reserve, shared_indices
from sanitize.errors import SanitizeError
from sanitize.output import write_image_subset

from .conftest import digits_split, run_cli


def check(data, reserve):
    return fitted_reserve(data, reserve, "images")


def test_a_reserve_from_the_same_distribution_passes_even_beside_poison() -> None:
    data, reserve = digits_split(0)
    kept, fit = check(badnet(data, 0.1, target=0, seed=0).dataset, reserve)
    assert kept is reserve and fit.shared == 0 and fit.missing_classes == [] and not fit.notes
    assert fit.two_sample_auroc < 0.65  # measured: 0.55 against 10 % poison


@pytest.mark.parametrize("change", ["transposed", "darker", "blurred"])
def test_a_reserve_from_another_distribution_is_refused(change: str) -> None:
    data, reserve = digits_split(0)
    x = reserve.images
    moved = {"transposed": x.transpose(2, 3).contiguous(), "darker": (x.float() * 0.7).to(torch.uint8),
             "blurred": torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).to(torch.uint8)}[change]
    other = from_arrays(moved.permute(0, 2, 3, 1).numpy(), reserve.labels.numpy(), reserve.classes)
    with pytest.raises(SanitizeError, match="does not look drawn from the data's distribution"):
        check(data, other)


def test_a_reserve_taken_from_the_data_is_refused_and_a_few_copies_are_dropped() -> None:
    data, reserve = digits_split(0)
    with pytest.raises(SanitizeError, match="must be held out from the data"):
        check(data, data.subset(range(300)))
    copies = reserve.subset(range(len(reserve)))
    copies.images = copies.images.clone()
    copies.images[:5] = data.images[:5]
    copies.images[5:8] = (data.images[5:8].int() + 3).clamp(max=255).to(torch.uint8)  # near copies
    kept, fit = check(data, copies)
    assert fit.shared == len(copies) - len(kept) >= 5 and "left out of the reserve" in fit.notes[0]
    assert len(shared_indices(data.images, reserve.images)) == 0  # distinct digits never collide


def test_classes_without_canaries_are_named() -> None:
    data, reserve = digits_split(0)
    labels = reserve.labels.numpy()
    without_7 = reserve.subset(np.flatnonzero(labels != 7))
    _, fit = check(data, without_7)
    assert fit.missing_classes == [7] and "class(es) 7" in fit.notes[0]


def test_feature_rows_from_another_distribution_are_refused(ember_dirs) -> None:
    from sanitize.data.rows import load_feature_reserve, load_features

    data = load_features(ember_dirs / "clean")
    reserve = load_feature_reserve(ember_dirs / "reserve", data)
    _, fit = fitted_reserve(data, reserve, "rows")
    assert fit.two_sample_auroc < 0.65
    shifted = reserve.subset(range(len(reserve)))
    shifted.X = shifted.X.clone()
    shifted.X[:, :256] *= 3.0  # the byte histogram of another collection
    with pytest.raises(SanitizeError, match="does not look drawn"):
        check_reserve_fit(data.X, data.labels, shifted.X, shifted.labels, 2, data.classes, "rows")


def test_cli_refuses_an_unfit_reserve_with_one_line_and_exit_2(tmp_path, capsys) -> None:
    data, reserve = digits_split(0)
    write_image_subset(data, range(len(data)), tmp_path / "data")
    write_image_subset(data, range(400), tmp_path / "from-data")
    d = examples.digits()
    transposed = from_arrays(d.images.transpose(2, 3)[:400].permute(0, 2, 3, 1).numpy(), d.labels[:400].numpy(),
                             d.classes)
    write_image_subset(transposed, range(400), tmp_path / "elsewhere")
    for folder, words in (("from-data", "must be held out"), ("elsewhere", "does not look drawn")):
        for command in ("ct", "asset"):
            code = run_cli(command, tmp_path / "data", "--reserve", tmp_path / folder, "--out", tmp_path / "o",
                           "--device", "cpu", "-q")
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert code == 2 and len(err) == 1 and words in err[0], (command, folder, err)
            assert not (tmp_path / "o").exists()
