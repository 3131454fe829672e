"""Attack constructions: counts, labels, where and how much pixels change, determinism, the CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanitize import from_arrays, load_image_folder
from sanitize.attacks import (
    ATTACK_INFO,
    ATTACKS,
    PoisonedSet,
    adap_blend,
    adap_patch,
    apply_trigger_to_test,
    badnet,
    blend,
    load_trigger,
    sig,
    tact,
    trojan,
    wanet,
)
from sanitize.attacks.blend import PIECES
from sanitize.attacks.patch import ADAP_PATCH_OPACITY, patch_side
from sanitize.attacks.sig import sig_frequency
from sanitize.attacks.wanet import control_points, identity_grid, wanet_grid
from sanitize.cli.root import main
from sanitize.data import examples
from sanitize.data.images import ImageDataset
from sanitize.errors import SanitizeError
from sanitize.output import write_image_subset

from .conftest import shared_loader

# The attacks that train a model first (cl, narcissus, dynamic, issba) have their own module,
# test_model_attacks.py, which trains once and shares the result.
PROCEDURAL = [name for name, info in ATTACK_INFO.items() if not info.trains_model]

RATE = 0.05
DIRTY = ["badnet", "blend", "trojan", "wanet", "tact", "adap-blend", "adap-patch"]


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return examples.digits()


@pytest.fixture(scope="module")
def rgb16(digits: ImageDataset) -> ImageDataset:
    """Digits upsampled to 16 px and tinted per image: a small RGB set that needs no shared data."""
    rng = np.random.default_rng(0)
    gray = torch.nn.functional.interpolate(digits.images[:800].float(), size=(16, 16), mode="bilinear")
    tint = torch.from_numpy(rng.uniform(0.4, 1.0, size=(800, 3, 1, 1))).float()
    rgb = (gray * tint).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return from_arrays(rgb, digits.labels[:800].numpy(), digits.classes)


@pytest.fixture(scope="module")
def cifar() -> ImageDataset:
    """1,000 CIFAR-10 test images from the offline copy beside the repo (skipped if absent)."""
    module = shared_loader()
    x, y = module.load("cifar10", "test", [0])
    return from_arrays(x[:1000], y[:1000], module.CLASSES["cifar10"])


@pytest.fixture(params=["digits", "rgb16", "cifar"])
def dataset(request: pytest.FixtureRequest) -> ImageDataset:
    return request.getfixturevalue(request.param)


def changed_rows(poisoned: PoisonedSet, clean: ImageDataset) -> np.ndarray:
    return (poisoned.dataset.images != clean.images).flatten(1).any(1).numpy()


# --- counts, labels, untouched samples -------------------------------------------------------

@pytest.mark.parametrize("name", PROCEDURAL)
def test_counts_labels_and_untouched_samples(name: str, dataset: ImageDataset) -> None:
    n = len(dataset)
    target = 0
    poisoned = ATTACKS[name](dataset, RATE, target, 3)
    info = ATTACK_INFO[name]
    poison, cover = poisoned.poison_indices, poisoned.cover_indices
    assert len(poison) == math.floor(n * RATE)
    assert len(cover) == (math.floor(n * info.default_cover_rate) if info.default_cover_rate else 0)
    assert len(np.intersect1d(poison, cover)) == 0
    assert len(np.unique(poison)) == len(poison)

    old, new = dataset.labels.numpy(), poisoned.dataset.labels.numpy()
    if name == "sig":
        assert poisoned.clean_label
        assert (old[poison] == target).all()
        assert (new == old).all()
    else:
        assert (new[poison] == target).all()
    others = np.setdiff1d(np.arange(n), poison)
    assert (new[others] == old[others]).all()  # covers and clean samples keep their labels
    if name == "tact":
        assert (old[poison] == 1).all()
        assert np.isin(old[cover], [5, 7]).all()

    changed = changed_rows(poisoned, dataset)
    touched = np.zeros(n, dtype=bool)
    touched[poison] = True
    touched[cover] = True
    assert not changed[~touched].any()
    assert changed[touched].mean() >= (0.9 if name == "wanet" else 1.0)
    assert poisoned.dataset.images.shape == dataset.images.shape
    kept_paths = [poisoned.dataset.paths[i] for i in np.flatnonzero(~touched)]
    assert kept_paths == [dataset.paths[i] for i in np.flatnonzero(~touched)]
    labels = poisoned.dataset.labels.numpy()
    # every sample sits under its label's folder, so writing the set keeps the poison labels
    assert all(p.split("/")[0] == poisoned.dataset.classes[labels[i]] for i, p in enumerate(poisoned.dataset.paths))
    assert len(set(poisoned.dataset.paths)) == n


def test_inputs_are_not_modified(digits: ImageDataset) -> None:
    before_images, before_labels = digits.images.clone(), digits.labels.clone()
    for name in PROCEDURAL:
        ATTACKS[name](digits, RATE, 0, 1)
    assert torch.equal(digits.images, before_images)
    assert torch.equal(digits.labels, before_labels)


@pytest.mark.parametrize("name", PROCEDURAL)
def test_same_seed_same_bytes(name: str, rgb16: ImageDataset) -> None:
    a = ATTACKS[name](rgb16, RATE, 2, 7)
    b = ATTACKS[name](rgb16, RATE, 2, 7)
    c = ATTACKS[name](rgb16, RATE, 2, 8)
    assert a.dataset.images.numpy().tobytes() == b.dataset.images.numpy().tobytes()
    assert np.array_equal(a.poison_indices, b.poison_indices)
    assert np.array_equal(a.cover_indices, b.cover_indices)
    assert not torch.equal(a.dataset.images, c.dataset.images)
    test_a, test_b = apply_trigger_to_test(a, rgb16), apply_trigger_to_test(b, rgb16)
    assert test_a.images.numpy().tobytes() == test_b.images.numpy().tobytes()


# --- where and how much the pixels change ----------------------------------------------------

def region_mask(poisoned: PoisonedSet, size: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    for s in poisoned.stamps:
        h, w = s.shape
        mask[s.top:s.top + h, s.left:s.left + w] = True
    return mask


@pytest.mark.parametrize("name", ["badnet", "trojan", "tact", "adap-patch"])
def test_patch_attacks_change_only_the_trigger_region(name: str, dataset: ImageDataset) -> None:
    poisoned = ATTACKS[name](dataset, RATE, 0, 5)
    rows = np.concatenate([poisoned.poison_indices, poisoned.cover_indices])
    inside = region_mask(poisoned, dataset.size)
    assert 0 < inside.sum() < inside.numel() / 2
    new, old = poisoned.dataset.images[rows], dataset.images[rows]
    assert torch.equal(new[..., ~inside], old[..., ~inside])
    if name != "adap-patch":  # opaque: the region holds exactly the pattern
        (stamp,) = poisoned.stamps
        h, w = stamp.shape
        region = new[..., stamp.top:stamp.top + h, stamp.left:stamp.left + w]
        assert torch.equal(region, stamp.pattern.expand_as(region))


def test_patch_positions_and_size_scaling(digits: ImageDataset) -> None:
    rng = np.random.default_rng(0)
    cifar = from_arrays(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 2, ["a", "b"])
    assert patch_side((32, 32)) == 3 and patch_side((64, 64)) == 6 and patch_side((8, 8)) == 3
    (corner,) = badnet(cifar, 0.1, 0, 0).stamps
    assert (corner.top, corner.left, corner.shape) == (29, 29, (3, 3))
    (square,) = trojan(cifar, 0.1, 0, 0).stamps
    assert (square.top, square.left, square.shape) == (21, 21, (8, 8))  # rows/cols 21-28
    big = from_arrays(np.zeros((4, 64, 64, 3), np.uint8), np.arange(4) % 2, ["a", "b"])
    (square64,) = trojan(big, 0.5, 0, 0).stamps
    assert (square64.top, square64.left, square64.shape) == (42, 42, (16, 16))
    (small,) = trojan(digits, RATE, 0, 0).stamps
    assert small.shape == (2, 2) and small.top + 2 <= 8
    corners = adap_patch(cifar, 0.1, 0, 0, cover_rate=0.1).stamps
    assert [(s.top, s.left) for s in corners] == [(1, 1), (1, 27), (27, 1), (27, 27)]
    assert len({s.pattern.numpy().tobytes() for s in corners}) == 4


def test_blend_moves_every_pixel_by_twenty_percent(dataset: ImageDataset) -> None:
    poisoned = blend(dataset, RATE, 0, 2)
    (stamp,) = poisoned.stamps
    rows = poisoned.poison_indices
    clean = dataset.images[rows].double()
    expected = 0.8 * clean + 0.2 * stamp.pattern.double()
    assert (poisoned.dataset.images[rows].double() - expected).abs().max() <= 0.5 + 1e-4  # rounding only
    assert (poisoned.dataset.images[rows].int() - dataset.images[rows].int()).abs().max() <= 51


def test_adap_blend_uses_half_of_the_pieces(dataset: ImageDataset) -> None:
    poisoned = adap_blend(dataset, RATE, 0, 2)
    (stamp,) = poisoned.stamps
    h, w = dataset.size
    rb = np.round(np.linspace(0, h, PIECES + 1)).astype(int)
    cb = np.round(np.linspace(0, w, PIECES + 1)).astype(int)
    rows = np.concatenate([poisoned.poison_indices, poisoned.cover_indices])
    new, old = poisoned.dataset.images[rows].double(), dataset.images[rows].double()
    blended = 0.85 * old + 0.15 * stamp.pattern.double()
    for k in range(len(rows)):
        kept = 0
        for r in range(PIECES):
            for c in range(PIECES):
                sl = (k, slice(None), slice(rb[r], rb[r + 1]), slice(cb[c], cb[c + 1]))
                if not torch.equal(new[sl], old[sl]):  # a kept piece: blended at 15 %, up to rounding
                    assert (new[sl] - blended[sl]).abs().max() <= 0.5 + 1e-4
                    kept += 1
        assert kept == PIECES * PIECES // 2
    test = apply_trigger_to_test(poisoned, dataset)
    src = dataset.subset(np.flatnonzero(dataset.labels.numpy() != 0))
    full = 0.8 * src.images.double() + 0.2 * stamp.pattern.double()
    assert (test.images.double() - full).abs().max() <= 0.5 + 1e-4


def test_sig_adds_the_documented_sinusoid(dataset: ImageDataset) -> None:
    poisoned = sig(dataset, RATE, 0, 4)
    h, w = dataset.size
    f = min(6.0, w / 4)
    assert sig_frequency(w) == f
    signal = 30 * np.sin(2 * np.pi * np.arange(w) * f / w)
    rows = poisoned.poison_indices
    clean = dataset.images[rows].numpy().astype(np.float64)
    expected = np.clip(np.round(clean + signal[None, None, None, :]), 0, 255)
    assert np.array_equal(poisoned.dataset.images[rows].numpy(), expected.astype(np.uint8))
    assert (poisoned.dataset.images[rows].int() - dataset.images[rows].int()).abs().max() <= 30


def test_wanet_is_a_small_smooth_warp(dataset: ImageDataset) -> None:
    poisoned = wanet(dataset, RATE, 0, 6)
    size = dataset.size
    assert control_points(size) == 4 and poisoned.params["k"] == 4
    grid, ins = wanet_grid(size, 6)
    assert np.isclose(np.abs(ins).mean(), 1.0)
    # Displacement in pixels: s/2 * field (align_corners=True maps [-1, 1] onto W-1 pixels).
    shift = (grid - identity_grid(size))[0] * torch.tensor([(size[1] - 1) / 2, (size[0] - 1) / 2])
    assert 0.05 < shift.abs().mean() < 0.5 and shift.abs().max() <= 0.5 * np.abs(ins).max() * 1.3
    rows = poisoned.poison_indices
    warped = torch.nn.functional.grid_sample(dataset.images[rows].float(), grid.expand(len(rows), -1, -1, -1),
                                             mode="bilinear", align_corners=True).round().clamp(0, 255)
    assert torch.equal(poisoned.dataset.images[rows], warped.to(torch.uint8))
    cover = poisoned.cover_indices
    plain = torch.nn.functional.grid_sample(dataset.images[cover].float(), grid.expand(len(cover), -1, -1, -1),
                                            mode="bilinear", align_corners=True).round().clamp(0, 255)
    assert not torch.equal(poisoned.dataset.images[cover], plain.to(torch.uint8))  # covers carry extra noise
    diff = (poisoned.dataset.images[rows].float() - dataset.images[rows].float()).abs()
    assert 0 < diff.mean() < 20


# --- test-time triggers -----------------------------------------------------------------------

@pytest.mark.parametrize("name", PROCEDURAL)
def test_triggered_test_set(name: str, digits: ImageDataset) -> None:
    poisoned = ATTACKS[name](digits, RATE, 0, 1)
    triggered = apply_trigger_to_test(poisoned, digits)
    labels = digits.labels.numpy()
    chosen = np.flatnonzero(labels == 1) if name == "tact" else np.flatnonzero(labels != 0)
    assert len(triggered) == len(chosen)
    assert triggered.paths == [digits.paths[i] for i in chosen]
    assert torch.equal(triggered.labels, digits.labels[chosen])
    assert (triggered.images != digits.images[chosen]).flatten(1).any(1).float().mean() > 0.9


@pytest.mark.parametrize("name", ["badnet", "blend", "trojan"])
def test_all_to_all_relabels_every_class_to_the_next(name: str, digits: ImageDataset) -> None:
    """All-to-all: poison drawn from every class, label y -> y + 1 mod C, no single target; the
    triggered test copy keeps every class, and the backdoor's label is the next class."""
    poisoned = ATTACKS[name](digits, RATE, seed=3, all_to_all=True)
    index = poisoned.poison_indices
    before, after = digits.labels[index], poisoned.dataset.labels[index]
    assert poisoned.target is None and poisoned.all_to_all
    assert torch.equal(after, (before + 1) % digits.num_classes)
    assert len(np.unique(before.numpy())) == digits.num_classes  # 89 samples reach every class
    rest = np.setdiff1d(np.arange(len(digits)), index)
    assert torch.equal(poisoned.dataset.labels[rest], digits.labels[rest])
    same = ATTACKS[name](digits, RATE, seed=3)  # the same samples and pixels as the all-to-one attack
    assert np.array_equal(same.poison_indices, index) and torch.equal(same.dataset.images, poisoned.dataset.images)
    triggered = apply_trigger_to_test(poisoned, digits)
    assert len(triggered) == len(digits)
    assert torch.equal(poisoned.backdoor_labels(triggered.labels), (digits.labels + 1) % 10)


def test_adap_patch_test_trigger_is_all_four_opaque(rgb16: ImageDataset) -> None:
    poisoned = adap_patch(rgb16, RATE, 0, 1)
    triggered = apply_trigger_to_test(poisoned, rgb16)
    for s in poisoned.stamps:
        h, w = s.shape
        region = triggered.images[..., s.top:s.top + h, s.left:s.left + w]
        assert torch.equal(region, s.pattern.expand_as(region))
    # Training samples carry one weak patch each: quarter k at opacity ADAP_PATCH_OPACITY[k].
    first = poisoned.poison_indices[0]
    s0 = poisoned.stamps[0]
    expected = s0.apply(rgb16.images[first:first + 1], ADAP_PATCH_OPACITY[0])
    assert torch.equal(poisoned.dataset.images[first:first + 1], expected)


# --- user triggers and bad input ----------------------------------------------------------------

def test_user_trigger_with_alpha_mask(tmp_path: Path, rgb16: ImageDataset) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[1:3, 1:4, 3] = 255  # only a 2x3 core is opaque
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    stamp = load_trigger(tmp_path / "t.png", 3)
    assert stamp.shape == (4, 5) and stamp.mask.sum() == 6
    poisoned = badnet(rgb16, RATE, 1, 0, trigger=stamp)
    rows = poisoned.poison_indices
    new, old = poisoned.dataset.images[rows], rgb16.images[rows]
    assert torch.equal(new[..., 13:15, 12:15], torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]
                       .expand(len(rows), 3, 2, 3))
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[13:15, 12:15] = False
    assert torch.equal(new[..., outside], old[..., outside])
    # Grayscale mask file instead of alpha; size must match.
    Image.fromarray(np.full((4, 5), 255, np.uint8)).save(tmp_path / "m.png")
    assert load_trigger(tmp_path / "t.png", 1, tmp_path / "m.png").mask.sum() == 20
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(tmp_path / "m3.png")
    with pytest.raises(SanitizeError, match="differs"):
        load_trigger(tmp_path / "t.png", 3, tmp_path / "m3.png")
    # A blend trigger is resized to the images.
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "b.png")
    blended = blend(rgb16, RATE, 0, 0, trigger=load_trigger(tmp_path / "b.png", 3))
    row = blended.poison_indices[0]
    expected = 0.8 * rgb16.images[row].double() + 0.2 * 200
    assert (blended.dataset.images[row].double() - expected).abs().max() <= 0.5 + 1e-4


def test_bad_arguments_are_clear_errors(digits: ImageDataset) -> None:
    with pytest.raises(SanitizeError, match=r"rate=1\.5"):
        badnet(digits, 1.5)
    with pytest.raises(SanitizeError, match="target=10"):
        blend(digits, RATE, target=10)
    with pytest.raises(SanitizeError, match="eligible"):
        sig(digits, 0.5)  # more than the target class holds
    with pytest.raises(SanitizeError, match="source"):
        tact(digits, RATE, target=1, source=1)
    with pytest.raises(SanitizeError, match="cover_classes"):
        tact(digits, RATE, target=0, cover_classes=[12])


# --- CLI round trip ------------------------------------------------------------------------------

def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


@pytest.fixture
def folders(tmp_path: Path, digits: ImageDataset) -> tuple[Path, Path]:
    write_image_subset(digits, range(400), tmp_path / "clean")
    write_image_subset(digits, range(400, 600), tmp_path / "test")
    return tmp_path / "clean", tmp_path / "test"


def test_cli_round_trip(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    clean, test = folders
    before = tree_hash(clean), tree_hash(test)
    out, tout = tmp_path / "poisoned", tmp_path / "triggered"
    code = run_cli(["attack", "adap-patch", str(clean), str(out), "--rate", "0.05", "--target", "3", "--seed", "2",
                    "--cover-rate", "0.02", "--test", str(test), "--test-out", str(tout), "-q"])
    assert code == 0
    assert (tree_hash(clean), tree_hash(test)) == before

    record = json.loads((out / "poison.json").read_text())
    assert record["attack"] == "adap-patch" and record["target"] == 3 and record["seed"] == 2
    assert len(record["poison"]) == 20 and len(record["cover"]) == 8
    assert all(p.startswith("3/") for p in record["poison"])
    assert len(record["trigger_files"]) == 4 and all((out / f).is_file() for f in record["trigger_files"])

    data = load_image_folder(clean)
    reloaded = load_image_folder(out)
    assert len(reloaded) == len(data)
    expected = ATTACKS["adap-patch"](data, 0.05, 3, 2, cover_rate=0.02)
    by_path = dict(zip(reloaded.paths, range(len(reloaded)), strict=True))
    for rel, index in zip(record["poison"] + record["cover"],
                          np.concatenate([expected.poison_indices, expected.cover_indices]).tolist(), strict=True):
        assert torch.equal(reloaded.images[by_path[rel]], expected.dataset.images[index])
        assert record["origin"][rel] == data.paths[index]
    untouched = set(data.paths) - set(record["origin"].values())
    assert all((out / p).read_bytes() == (clean / p).read_bytes() for p in untouched)

    triggered = load_image_folder(tout)
    assert len(triggered) == sum(1 for p in Path(test).rglob("*.png") if p.parent.name != "3")
    assert not any(p.startswith("3/") for p in triggered.paths)

    # Same seed, same bytes on disk; a second run refuses to overwrite without --force.
    again = tmp_path / "again"
    assert run_cli(["attack", "adap-patch", str(clean), str(again), "--rate", "0.05", "--target", "3",
                    "--seed", "2", "--cover-rate", "0.02", "-q"]) == 0
    for rel in record["poison"] + record["cover"]:
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
    assert run_cli(["attack", "badnet", str(clean), str(out), "-q"]) == 2
    assert run_cli(["attack", "badnet", str(clean), str(out), "-q", "--force"]) == 0
    assert json.loads((out / "poison.json").read_text())["attack"] == "badnet"


def test_cli_all_to_all(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    clean, test = folders
    out, tout = tmp_path / "a2a", tmp_path / "a2a-test"
    assert run_cli(["attack", "blend", str(clean), str(out), "--all-to-all", "--rate", "0.05", "--test", str(test),
                    "--test-out", str(tout), "-q"]) == 0
    record = json.loads((out / "poison.json").read_text())
    assert record["all_to_all"] and record["target"] is None and record["target_class"] is None
    moved = {(record["origin"][p].split("/")[0], p.split("/")[0]) for p in record["poison"]}
    assert all(int(new) == (int(old) + 1) % 10 for old, new in moved) and len(moved) > 5
    assert record["test"]["selection"] == "every class"
    assert len(load_image_folder(tout)) == sum(1 for _ in Path(test).rglob("*.png"))


def test_cli_user_trigger_and_class_names(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    clean, _ = folders
    first = tmp_path / "first"
    assert run_cli(["attack", "trojan", str(clean), str(first), "--rate", "0.05", "-q"]) == 0
    second = tmp_path / "second"
    assert run_cli(["attack", "trojan", str(clean), str(second), "--rate", "0.05", "-q",
                    "--trigger", str(first / "trigger.png")]) == 0  # the written trigger reads back exactly
    record = json.loads((first / "poison.json").read_text())
    for rel in record["poison"]:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    tacts = tmp_path / "tact"
    assert run_cli(["attack", "tact", str(clean), str(tacts), "--target", "2", "--source", "4",
                    "--cover-classes", "6,8", "--rate", "0.02", "--cover-rate", "0.02", "-q"]) == 0
    record = json.loads((tacts / "poison.json").read_text())
    assert record["source"] == 4 and record["cover_classes"] == [6, 8]
    assert all(record["origin"][p].startswith("4/") for p in record["poison"])
    assert all(p.split("/")[0] in ("6", "8") for p in record["cover"])


@pytest.mark.parametrize("args, message", [
    (["attack", "nope", "{clean}", "{out}"], "unknown attack"),
    (["attack", "sig", "{clean}", "{out}", "--trigger", "{clean}/0/000000.png"], "does not take --trigger"),
    (["attack", "badnet", "{clean}", "{out}", "--cover-rate", "0.1"], "no cover samples"),
    (["attack", "badnet", "{clean}", "{clean}/0"], "inside the input"),
    (["attack", "badnet", "{clean}", "{out}", "--target", "cat"], "not a class"),
    (["attack", "badnet", "{clean}", "{out}", "--test", "{clean}"], "go together"),
    (["attack", "sig", "{clean}", "{out}", "--all-to-all"], "--all-to-all applies to badnet, blend, trojan"),
    (["attack", "badnet", "{clean}", "{out}", "--all-to-all", "--target", "1"], "does not apply with --all-to-all"),
])
def test_cli_bad_input_exits_2(args: list[str], message: str, tmp_path: Path, folders: tuple[Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    clean, _ = folders
    before = tree_hash(clean)
    argv = [a.format(clean=clean, out=tmp_path / "out") for a in args]
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert tree_hash(clean) == before


def test_poison_count_is_floor_of_n_times_rate_without_float_noise() -> None:
    from sanitize.attacks.base import choose_poison_indices

    assert len(choose_poison_indices(100, 100, 0.29, 0)) == 29  # 0.29 * 100 == 28.999... in floating point
    assert len(choose_poison_indices(1797, 1797, 0.003, 0)) == 5
