"""A reserve that does not fit the data is refused before any training (sanitize.data.reserve_fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanitize import from_arrays
from sanitize.attacks import badnet
from sanitize.data import examples
from sanitize.data.reserve_fit import check_reserve_fit, fitted_reserve, reserve_clustering, shared_indices
from sanitize.errors import SanitizeError
from sanitize.output import write_image_subset

from .conftest import digits_split, run_cli, shared_loader


def check(data, reserve):
    return fitted_reserve(data, reserve, "images")


def test_a_reserve_from_the_same_distribution_passes_even_beside_poison() -> None:
    data, reserve = digits_split(0)
    kept, fit = check(badnet(data, 0.1, target=0, seed=0).dataset, reserve)
    assert kept is reserve and fit.shared == 0 and fit.missing_classes == [] and not fit.notes
    assert fit.two_sample_auroc < 0.65  # measured: 0.55 against 10 % poison
    assert fit.clustering_auroc < 0.55 and fit.twin_groups is None  # measured: 0.48


def test_a_reserve_of_near_twins_is_noted_and_its_twins_grouped() -> None:
    # A reserve of bursts: 9 digits per class, each with two slightly noisy copies (frames of one
    # video, augmented copies), beside data drawn one image at a time.
    data, reserve = digits_split(0)
    labels = reserve.labels.numpy()
    originals = np.concatenate([np.flatnonzero(labels == c)[:9] for c in range(10)])
    rng = np.random.default_rng(0)
    x = reserve.images[torch.as_tensor(originals)].permute(0, 2, 3, 1).numpy()
    copies = [np.clip(x * rng.uniform(0.95, 1.05, x.shape), 0, 255).astype(np.uint8) for _ in range(2)]
    bursts = from_arrays(np.concatenate([x, *copies]), np.tile(labels[originals], 3), reserve.classes)
    kept, fit = check(data, bursts)
    assert fit.clustering_auroc > 0.8 and fit.clustering_p < 1e-6
    assert any("nearer one another than the data's are to them" in note for note in fit.notes)
    groups, n = fit.twin_groups, len(originals)
    assert groups is not None and len(kept) == 3 * n
    assert all(groups[i] == groups[i + n] == groups[i + 2 * n] for i in range(n))  # each burst is one group
    assert fit.as_dict()["twin_groups"] <= n
    from sanitize.detectors.asset.inputs import image_inputs  # the detectors draw canaries by these groups

    inputs = image_inputs(data, bursts, "small_cnn", torch.device("cpu"), custom=False)
    assert np.array_equal(inputs.reserve_groups, groups)


def test_gtsrb_test_split_beside_its_training_split_is_clustered_and_cifar10_is_not() -> None:
    """GTSRB's images are tracks of about 30 frames of one sign; a reserve from the test split
    shares tracks with itself, not with the training images (docs/benchmarks.md, GTSRB asset)."""
    loader = shared_loader()
    if not (loader.HERE / "gtsrb").is_dir():
        pytest.skip("no offline GTSRB data beside the repo")
    rng = np.random.default_rng(0)
    for name, expected in (("gtsrb", (0.65, 1.0)), ("cifar10", (0.4, 0.6))):
        x, y = loader.load(name, "train", None if name == "gtsrb" else [0])  # GTSRB's parts go class by class
        xt, yt = loader.load(name, "test", [0])
        data_idx = rng.choice(len(x), 3000, replace=False)
        reserve_idx = np.concatenate([rng.choice(np.flatnonzero(yt == c), min(20, (yt == c).sum()), replace=False)
                                      for c in np.unique(yt)])
        to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
        auroc, p_value, _ = reserve_clustering(to_tensor(x[data_idx]), y[data_idx], to_tensor(xt[reserve_idx]),
                                               yt[reserve_idx])
        assert expected[0] <= auroc <= expected[1], (name, auroc, p_value)


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


def test_non_finite_feature_values_do_not_break_the_checks() -> None:
    # rows built through the Python API may hold NaN or infinite values (files with them are refused
    # when read); the checks read them as 0 instead of failing with a traceback
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.normal(size=(400, 20)).astype(np.float32))
    reserve = torch.from_numpy(rng.normal(size=(100, 20)).astype(np.float32))
    data[5, 1], reserve[3, 2] = float("inf"), float("nan")
    labels, reserve_labels = torch.arange(2).repeat_interleave(200), torch.arange(2).repeat_interleave(50)
    keep, fit = check_reserve_fit(data, labels, reserve, reserve_labels, 2, ["a", "b"], "rows")
    assert len(keep) == 100 and 0.3 < fit.clustering_auroc < 0.7 and 0.3 < fit.two_sample_auroc < 0.7
