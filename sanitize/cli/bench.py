"""``sanitize bench CLEAN --reserve R --test T --out O``: the attacks x detectors x seeds matrix.

Writes ``bench.json``, ``bench.md`` and ``bench.html`` (inline SVG plot) into ``--out`` and one
file per finished cell under ``--out/cells``; running the same command again resumes, skipping
finished cells whose settings did not change. See :mod:`sanitize.bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..domains import check_epochs, parse_size
from ..errors import SanitizeError
from ..exits import EXIT_CLEAN
from .common import DeviceOpt, QuietOpt, SizeOpt, stdout


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)


def parse_list(value: str, option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SanitizeError(f"{option} {value!r}: expected a comma-separated list")
    return items


def parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in parse_list(value, "--seeds")]
    except SanitizeError:
        raise
    except ValueError:
        raise SanitizeError(f"--seeds {value!r}: expected comma-separated integers, e.g. 0,1") from None
    if any(s < 0 for s in seeds):
        raise SanitizeError(f"--seeds {value!r}: seeds must be non-negative")
    return seeds


def bench_command(
    clean: Annotated[Path, typer.Argument(help="Clean image folder (one sub-folder per class) to poison.")],
    reserve: Annotated[Path, typer.Option("--reserve", "-r", help="Trusted clean images (same classes).")],
    test: Annotated[Path, typer.Option("--test", "-t", help="Test images for ACC and ASR (same classes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for bench.json/md/html and finished cells; "
                                                          "an existing one is resumed.")],
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks (see sanitize attack --help); NAME-all-to-all "
                                              "for the all-to-all variant of badnet, blend, trojan.")
                       ] = "badnet,blend",
    detectors: Annotated[str, typer.Option(help="Comma-separated detectors, e.g. ct,spectral,strip.")
                         ] = "ct,spectral",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    rate: Annotated[float | None, typer.Option(help="Poison rate for every attack (default: each attack's).")
                    ] = None,
    target: Annotated[int, typer.Option(help="Target class index.")] = 0,
    arch: Annotated[str, typer.Option(help="Model for the passive detectors and the retraining.")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: by dataset size).")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Model cache (default: ~/.cache/sanitize).")
                         ] = None,
    device: DeviceOpt = "auto",
    size: SizeOpt = None,
    quiet: QuietOpt = False,
) -> int:
    """Benchmark detectors: poison CLEAN with each attack, detect, score, retrain, measure ACC/ASR."""
    from contextlib import nullcontext

    from ..bench import BenchConfig, markdown_table, run_bench
    from ..data.images import load_image_folder, load_like, load_reserve
    from ..nn.models import available_models
    from ..output import claim_out_dir
    from ..progress import RichProgress, Silent

    config = BenchConfig(parse_list(attacks, "--attacks"), parse_list(detectors, "--detectors"), parse_seeds(seeds),
                         rate, target, device, arch, epochs, None if cache_dir is None else str(cache_dir))
    config.check()
    if arch != "auto" and arch not in available_models():
        raise SanitizeError(f"unknown --arch {arch!r}; choose from auto, {', '.join(available_models())}")
    check_epochs(epochs)
    with claim_out_dir(out, [clean, reserve, test], force=True) as out:  # a bench folder is resumed, not replaced
        data = load_image_folder(clean, size=parse_size(size))
        reserve_set = load_reserve(reserve, data)
        test_set = load_like(test, data, "test set")
        log = (lambda _m: None) if quiet else (lambda m: stdout.print(m, markup=False, highlight=False))
        with (nullcontext(Silent()) if quiet else RichProgress()) as progress:
            bench = run_bench(data, reserve_set, test_set, out, config, progress=progress, log=log)
    if not quiet:
        stdout.print(markdown_table(bench), markup=False, highlight=False)
        stdout.print(f"{len(bench['computed_cells'])} cell(s) computed, "
                     f"{len(bench['rows']) - len(bench['computed_cells'])} resumed; written to {out}")
    return EXIT_CLEAN
