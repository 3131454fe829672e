"""``sanitize features`` (PE files -> EMBER raw features) and the feature-row side of ``sanitize attack``.

``features`` never stops on a bad file: files that are not PE (or that lief cannot parse) are
listed with their reason in ``<out>.skipped.csv`` and the summary, and the run goes on.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ..domains import check_fraction, resolve_class
from ..errors import SanitizeError
from ..output import atomic_write, claim_out_dir, staged_output

stdout = Console()


def register(app: typer.Typer) -> None:
    app.command("features")(features_command)


def _check_out_file(out: Path, inputs: list[Path], force: bool, suffix: str, option: str) -> Path:
    out = Path(out).expanduser().resolve()
    if out.suffix != suffix:
        raise SanitizeError(f"{option} {out}: expected a {suffix} file name")
    for src in inputs:
        src = Path(src).expanduser().resolve()
        if out == src or (src.is_dir() and out.is_relative_to(src)):
            raise SanitizeError(f"{option} {out} is inside the input {src}; choose a path outside it")
    if out.is_dir():
        raise SanitizeError(f"{option} {out} is a folder; expected a {suffix} file name")
    if out.exists() and not _written_by_features(out):
        raise SanitizeError(f"{option} {out} exists and is not a {suffix} file sanitize features writes: it is "
                            f"never replaced, even with --force; remove it yourself or choose another name")
    if out.exists() and not force:
        raise SanitizeError(f"{option} {out} already exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise SanitizeError(f"{option} {out}: parent folder {out.parent} does not exist")
    return out


def _written_by_features(path: Path) -> bool:
    """Whether ``--force`` may replace ``path``: empty, or shaped like what this command writes
    (raw EMBER records, the vectors with sha256 ids, the skip list). A file cannot carry a marker
    as output folders do, so its content is the evidence; anything else is the user's."""
    try:
        if path.stat().st_size == 0:
            return True
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                first = json.loads(f.readline(1 << 20))
            return isinstance(first, dict) and {"sha256", "label", "histogram"} <= first.keys()
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as saved:
                return set(saved.files) == {"X", "y", "sha256"}
        with open(path, encoding="utf-8") as f:
            return f.readline(64).strip() == "path,reason"
    except (OSError, ValueError, RecursionError):
        return False


def features_command(
    inputs: Annotated[Path, typer.Argument(help="A PE file or a folder of them (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Raw features, one JSON record per line (.jsonl).")],
    vectors: Annotated[Path | None, typer.Option(
        "--vectors", help="Also write the EMBER v2 vectors (2381 float32) with sha256 ids as this .npz.")] = None,
    label: Annotated[int, typer.Option(help="Label written into every record: -1 unlabelled, 0 benign, "
                                            "1 malicious.")] = -1,
    force: Annotated[bool, typer.Option("--force", help="Replace --out / --vectors if sanitize features wrote them.")
                       ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
) -> int:
    """Extract EMBER (feature version 2) raw features from PE files with lief; skip other files with a reason."""
    from .. import ember
    from ..ember.pe import NotPE, iter_files, raw_features

    if label not in (-1, 0, 1):
        raise SanitizeError(f"--label {label}: expected -1, 0 or 1")
    if not inputs.exists():
        raise SanitizeError(f"{inputs}: no such file or folder")
    out = _check_out_file(out, [inputs], force, ".jsonl", "--out")
    vec = _check_out_file(vectors, [inputs], force, ".npz", "--vectors") if vectors is not None else None
    skipped_path = _check_out_file(out.with_name(out.stem + ".skipped.csv"), [inputs], force, ".csv",
                                   "the skip list beside --out,")
    try:
        import lief  # noqa: F401
    except ImportError:
        raise SanitizeError("the PE extractor needs lief, an optional dependency: pip install 'sanitize[pe]'") from None
    records: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for path in iter_files(inputs):
        rel = path.relative_to(inputs).as_posix() if inputs.is_dir() else path.name
        try:
            records.append(raw_features(path, label))
        except NotPE as exc:
            skipped.append((rel, str(exc)))
    if not records and not skipped:
        raise SanitizeError(f"{inputs}: no files")

    def write_jsonl(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")

    atomic_write(out, write_jsonl)

    def write_skipped(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(skipped)

    atomic_write(skipped_path, write_skipped)
    if vec is not None:
        X = ember.vectorize(records, 2)
        ids = np.array([r["sha256"] for r in records])
        y = np.full(len(records), label, dtype=np.float32)
        atomic_write(vec, lambda tmp: _save_npz(tmp, X=X, y=y, sha256=ids))
    if not quiet:
        table = Table(title="sanitize features", show_header=False)
        table.add_row("extracted", f"{len(records)} PE file(s) -> {out}")
        table.add_row("skipped", f"{len(skipped)} (reasons: {skipped_path})")
        for rel, reason in skipped[:10]:
            table.add_row("", f"{rel}: {reason}")
        if vec is not None:
            table.add_row("vectors", f"{vec} ({len(records)} x 2381 float32)")
        stdout.print(table)
    return 0


def _save_npz(tmp: Path, **arrays: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def feature_attack(name: str, clean: Path, out_dir: Path, rate: float | None, target: str, seed: int,
                   trigger: dict, fmt: str, force: bool, quiet: bool) -> int:
    """``sanitize attack ember-explanation``: poison feature rows, write them in the input format + poison.json.
    ``trigger``: the attack's keyword options (``constrained``, ``trigger_size``, ``values``)."""
    if rate is not None:  # the seed's range is the option's (SEED_RANGE)
        check_fraction(rate)
    with claim_out_dir(out_dir, [clean], force) as out:
        record, n_unlabelled = _poison_rows_and_write(name, clean, out, rate, target, seed, trigger, fmt, force)
    if not quiet:
        features = record["params"]["features"]
        table = Table(title=f"sanitize attack {name}", show_header=False)
        table.add_row("rows", f"{record['n_samples']} ({n_unlabelled} unlabelled)")
        table.add_row("poison", f"{record['n_poison']} benign rows (rate {record['params'].get('rate', rate)}), "
                                f"labels kept")
        table.add_row("trigger", f"{len(features)} features" + (" (constrained)" if trigger["constrained"] else "")
                      + f", values {record['params']['value_selection']}: "
                      + ", ".join(features[:6]) + (", ..." if len(features) > 6 else ""))
        table.add_row("output", f"{out} ({', '.join(record['files'])}; ground truth: poison.json)")
        stdout.print(table)
    return 0


def _poison_rows_and_write(name: str, clean: Path, out: Path, rate: float | None, target: str, seed: int,
                           trigger: dict, fmt: str, force: bool) -> tuple[dict, int]:
    """Poison the rows and write them in the input format with poison.json; the record and the number
    of unlabelled rows."""
    from ..attacks import FEATURE_ATTACK_INFO, FEATURE_ATTACKS
    from ..attacks.io import feature_poison_record, write_poison_json
    from ..data.rows import load_features, write_features

    info = FEATURE_ATTACK_INFO[name]
    data = load_features(clean, fmt)
    target_index = resolve_class(target, data.classes, "target")
    rate = info.default_rate if rate is None else rate
    poisoned = FEATURE_ATTACKS[name](data, rate=rate, target=target_index, seed=seed, **trigger)
    with staged_output(out, force) as staging:
        files = write_features(poisoned.dataset, np.arange(len(data)), staging)
        record = feature_poison_record(data, poisoned, clean, files)
        write_poison_json(staging, record)
    return record, data.n_unlabelled
