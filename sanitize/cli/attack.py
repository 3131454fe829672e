"""``sanitize attack`` and ``sanitize evaluate``: make a poisoned set with ground truth, score a report.

``attack`` never writes into its inputs: the poisoned folder (and the triggered test copy) are
staged next to their destination and renamed into place only when complete
(:func:`sanitize.output.staged_output`). Unmodified images are hard-linked (or copied across file
systems), modified ones are written as PNG under their original file stem; poison samples whose
label changes move to the target class folder. ``poison.json`` records which output paths are
poison and cover, so ``evaluate`` can score any detector's ``report.json`` on that folder.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..attacks.catalog import ATTACK_ALIASES, ATTACK_INFO, FEATURE_ATTACK_INFO, canonical_attack
from ..domains import SEED_RANGE, check_arch, check_fraction, parse_size, resolve_class
from ..errors import SanitizeError
from ..output import atomic_write, claim_out_dir

if TYPE_CHECKING:
    from ..attacks import Stamp
    from ..data.images import ImageDataset

stdout = Console()


def register(app: typer.Typer) -> None:
    """Attach ``attack`` and ``evaluate`` to the main ``sanitize`` app."""
    app.command("attack")(attack_command)
    app.command("evaluate")(evaluate_command)


def _attack_help() -> str:
    rows = [f"{name} ({info.default_rate:g}" + (f" + {info.default_cover_rate:g} cover" if info.default_cover_rate
                                                else "") + ")"
            for name, info in {**ATTACK_INFO, **FEATURE_ATTACK_INFO}.items()]
    aliases = ", ".join(f"{alias} = {name}" for alias, name in ATTACK_ALIASES.items())
    return ("Attack (default rate): " + ", ".join(rows) + f" ({aliases}). See docs/attacks.md and docs/ember.md.")


def _one_out(positional: Path | None, option: Path | None) -> Path:
    """The output folder, given as ``--out`` like every other command or as OUT_DIR (the first form)."""
    if positional is not None and option is not None:
        raise SanitizeError("give the output folder once: as --out or as OUT_DIR")
    if positional is None and option is None:
        raise SanitizeError("missing the output folder: --out FOLDER")
    return positional if positional is not None else option


ALL_TO_ALL = ", ".join(n for n, i in ATTACK_INFO.items() if i.all_to_all)


def check_options(name: str, rate: float | None, cover_rate: float | None, source: str | None,
                  cover_classes: str | None, trigger: Path | None, mask: Path | None,
                  test: Path | None, test_out: Path | None) -> None:
    """Reject options the chosen attack does not take, before anything is read."""
    if name not in ATTACK_INFO:
        raise SanitizeError(f"unknown attack {name!r}; choose from {', '.join(ATTACK_INFO)}")
    info = ATTACK_INFO[name]
    for value, parameter in ((rate, "rate"), (cover_rate, "cover_rate")):
        if value is not None:
            check_fraction(value, parameter)
    if cover_rate is not None and info.default_cover_rate is None:
        raise SanitizeError(f"{name} has no cover samples; drop --cover-rate")
    if (source is not None or cover_classes is not None) and not info.has_source:
        raise SanitizeError(f"{name} is not source-specific; --source/--cover-classes apply to tact only")
    if trigger is not None and not info.custom_trigger:
        custom = ", ".join(n for n, i in ATTACK_INFO.items() if i.custom_trigger)
        raise SanitizeError(f"{name} does not take --trigger (attacks that do: {custom})")
    if mask is not None and trigger is None:
        raise SanitizeError("--mask needs --trigger")
    for path, option in ((trigger, "--trigger"), (mask, "--mask")):
        if path is not None and not path.is_file():
            raise SanitizeError(f"{option} {path}: no such file")
    if (test is None) != (test_out is None):
        raise SanitizeError("--test and --test-out go together")


def check_training_options(name: str, device: str, arch: str, cache_dir: Path | None) -> None:
    """``--device``, ``--arch`` and ``--cache-dir`` only mean something to the attacks that train a model."""
    if ATTACK_INFO[name].trains_model:
        from ..nn.devices import resolve_device

        check_arch(arch)
        resolve_device(device)
        return
    given = [flag for flag, value, default in (("--device", device, "auto"), ("--arch", arch, "auto"),
                                                ("--cache-dir", cache_dir, None)) if value != default]
    if given:
        training = ", ".join(n for n, i in ATTACK_INFO.items() if i.trains_model)
        raise SanitizeError(f"{name} trains no model; {', '.join(given)} appl(ies) to {training} only")


def attack_params(name: str, data: ImageDataset, rate: float | None, cover_rate: float | None,
                  source: str | None, cover_classes: str | None, stamp: Stamp | None) -> dict[str, Any]:
    info = ATTACK_INFO[name]
    params: dict[str, Any] = {"rate": info.default_rate if rate is None else rate}
    if info.default_cover_rate is not None:
        params["cover_rate"] = info.default_cover_rate if cover_rate is None else cover_rate
    if info.has_source:
        if source is not None:
            params["source"] = resolve_class(source, data.classes, "source")
        if cover_classes is not None:
            names = [c.strip() for c in cover_classes.split(",") if c.strip()]
            params["cover_classes"] = [resolve_class(c, data.classes, "cover_classes") for c in names]
    if stamp is not None:
        params["trigger"] = stamp
    return params


def attack_command(
    name: Annotated[str, typer.Argument(help=_attack_help(), show_default=False)],
    clean_dir: Annotated[Path, typer.Argument(help="Clean image folder: one sub-folder per class.")],
    out_dir: Annotated[Path | None, typer.Argument(help="New folder for the poisoned set and poison.json (or "
                                                        "--out).", show_default=False)] = None,
    rate: Annotated[float | None, typer.Option(help="Poison fraction of the whole set (default: per attack).")
                    ] = None,
    target: Annotated[str | None, typer.Option(help="Target class: folder name or index (default 0).")] = None,
    all_to_all: Annotated[bool, typer.Option(
        "--all-to-all", help="badnet, blend, trojan: poison every class, each relabelled to the next one "
                             "(y -> y+1 mod C) instead of one target.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.", **SEED_RANGE)] = 0,
    cover_rate: Annotated[float | None, typer.Option(
        "--cover-rate", help="Cover fraction (wanet, tact, adap-blend, adap-patch).")] = None,
    source: Annotated[str | None, typer.Option(help="tact: source class (default 1).")] = None,
    cover_classes: Annotated[str | None, typer.Option(
        "--cover-classes", help="tact: comma-separated cover classes (default 5,7).")] = None,
    trigger: Annotated[Path | None, typer.Option(
        help="Your own trigger image (badnet, trojan, tact: a patch; blend, adap-blend: resized to the "
             "images). Its alpha channel, if any, is the mask.")] = None,
    mask: Annotated[Path | None, typer.Option(help="Grayscale mask for --trigger (255 = trigger).")] = None,
    test: Annotated[Path | None, typer.Option(help="Clean test folder to make a triggered copy of (for ASR).")
                    ] = None,
    test_out: Annotated[Path | None, typer.Option("--test-out", help="New folder for the triggered test copy.")
                        ] = None,
    size: Annotated[str | None, typer.Option(help="Resize images to N or HxW pixels.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR / --test-out if sanitize wrote them.")
                       ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
    constrained: Annotated[bool, typer.Option(
        "--constrained", help="ember-explanation: only the 17 features a real PE file can change.")] = False,
    trigger_size: Annotated[int | None, typer.Option(
        "--trigger-size", min=1, help="ember-explanation: trigger features (default 17 constrained, 32 otherwise).")
                            ] = None,
    trigger_values: Annotated[str | None, typer.Option(
        "--trigger-values", help="ember-explanation: min-population (the paper's: each feature's rarest observed "
                                 "value) or beyond-range (past every value the rows take).")] = None,
    fmt: Annotated[str, typer.Option("--input-format", help="ember-explanation input: auto, ember, npz or jsonl.")
                   ] = "auto",
    fmt_old: Annotated[str | None, typer.Option("--format", hidden=True)] = None,  # the old name, one release
    out: Annotated[Path | None, typer.Option("--out", "-o", help="New folder for the poisoned set and poison.json "
                                                                 "(or give it as OUT_DIR).")] = None,
    device: Annotated[str, typer.Option(
        help="cl, narcissus, dynamic, issba: where their models train (auto, cpu, cuda, cuda:N).")] = "auto",
    arch: Annotated[str, typer.Option(
        help="cl, narcissus, dynamic, issba: the classifier they train (auto: resnet18 on a GPU at >= 32 px, "
             "else small_cnn).")] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="cl, narcissus, dynamic, issba: where what they train is cached (default: "
                            "$SANITIZE_CACHE or ~/.cache/sanitize).")] = None,
) -> int:
    """Poison CLEAN_DIR with a backdoor attack into --out (or OUT_DIR) and record the ground truth in poison.json."""
    out_dir = _one_out(out_dir, out)
    fmt = fmt_old if fmt_old is not None and fmt == "auto" else fmt

    name = canonical_attack(name)
    if name in FEATURE_ATTACK_INFO:
        from .features import feature_attack

        image_only = {"--cover-rate": cover_rate, "--source": source, "--cover-classes": cover_classes,
                      "--trigger": trigger, "--mask": mask, "--test": test, "--test-out": test_out, "--size": size}
        given = [option for option, value in image_only.items() if value is not None]
        if given:
            raise SanitizeError(f"{name} works on feature rows; {', '.join(given)} appl(ies) to image attacks only")
        if all_to_all:
            raise SanitizeError(f"--all-to-all applies to {ALL_TO_ALL}, not {name}")
        trigger = {"constrained": constrained, "trigger_size": trigger_size,
                   **({"values": trigger_values} if trigger_values is not None else {})}
        return feature_attack(name, clean_dir, out_dir, rate, "0" if target is None else target, seed, trigger,
                              fmt, force, quiet)
    if constrained or trigger_size is not None or trigger_values is not None or fmt != "auto":
        raise SanitizeError(f"--constrained, --trigger-size, --trigger-values and --input-format apply to feature "
                            f"attacks, not {name}")
    check_options(name, rate, cover_rate, source, cover_classes, trigger, mask, test, test_out)
    check_training_options(name, device, arch, cache_dir)
    if all_to_all and not ATTACK_INFO[name].all_to_all:
        raise SanitizeError(f"--all-to-all applies to {ALL_TO_ALL}, not {name}")
    if all_to_all and target is not None:
        raise SanitizeError("--target does not apply with --all-to-all (every class is a target)")
    with ExitStack() as claims:  # both folders checked and locked before any work, until the results are in place
        out = claims.enter_context(claim_out_dir(out_dir, [clean_dir, test], force, "OUT_DIR"))
        test_dest = (claims.enter_context(claim_out_dir(test_out, [clean_dir, test, out], force, "--test-out"))
                     if test_out is not None else None)
        training = {"device": device, "arch": arch, "cache_dir": cache_dir, "quiet": quiet}
        record = _poison_and_write(name, clean_dir, out, target, seed, rate, cover_rate, source, cover_classes,
                                   trigger, mask, test, test_dest, size, force, all_to_all, training)
    if not quiet:
        print_attack_summary(record, out, test_dest)
    return 0


def _poison_and_write(name: str, clean_dir: Path, out: Path, target: str | None, seed: int, rate: float | None,
                      cover_rate: float | None, source: str | None, cover_classes: str | None, trigger: Path | None,
                      mask: Path | None, test: Path | None, test_dest: Path | None, size: str | None,
                      force: bool, all_to_all: bool = False, training: dict | None = None) -> dict:
    """Poison the clean folder and write OUT_DIR (and the triggered test copy); the poison.json record."""
    from ..attacks import apply_trigger_to_test, load_trigger
    from ..attacks.io import poison_record, save_stamp, write_poison_json, write_poisoned, write_triggered_test
    from ..data.images import load_image_folder, load_like
    from ..output import staged_output

    data = load_image_folder(clean_dir, size=parse_size(size))
    target_index = resolve_class("0" if target is None else target, data.classes, "target")
    stamp = load_trigger(trigger, data.channels, mask) if trigger is not None else None
    params = attack_params(name, data, rate, cover_rate, source, cover_classes, stamp)
    if all_to_all:
        params["all_to_all"] = True
    poisoned = _run(name, data, target_index, seed, params, training or {})
    test_set = load_like(Path(test), data, "--test") if test is not None else None
    triggered = apply_trigger_to_test(poisoned, test_set) if test_set is not None else None

    with staged_output(out, force) as staging:
        paths = write_poisoned(data, poisoned, staging)
        trigger_files = []
        for k, s in enumerate(poisoned.stamps):
            filename = "trigger.png" if len(poisoned.stamps) == 1 else f"trigger-{k + 1}.png"
            save_stamp(s, staging / filename)
            trigger_files.append(filename)
        test_info = None
        if triggered is not None and test_dest is not None:
            test_info = {"input": str(Path(test).resolve()), "output": str(test_dest), "n_images": len(triggered),
                         "selection": "source class" if poisoned.source is not None else
                         "every class" if poisoned.all_to_all else "all but the target class"}
        record = poison_record(data, poisoned, paths, trigger_files, test_info, trigger)
        write_poison_json(staging, record)
        if triggered is not None and test_dest is not None:
            with staged_output(test_dest, force, "--test-out") as test_staging:
                written = write_triggered_test(triggered, test_staging)
                test_record = {"attack": name, "target": record["target"], "target_class": record["target_class"],
                               "all_to_all": poisoned.all_to_all, "source": poisoned.source, "seed": seed,
                               "poisoned_set": str(out),
                               "images": written}
                (test_staging / "triggered.json").write_text(json.dumps(test_record, indent=1) + "\n",
                                                             encoding="utf-8")
    return record


def _run(name: str, data: ImageDataset, target: int, seed: int, params: dict[str, Any], training: dict[str, Any]
         ) -> Any:
    """The attack, with progress bars while an attack that trains a model trains it."""
    from contextlib import nullcontext

    from ..attacks import Surrogate, run_attack
    from ..nn.devices import resolve_device
    from ..progress import RichProgress, Silent

    rate = params.pop("rate")
    if not ATTACK_INFO[name].trains_model:
        return run_attack(name, data, rate, target, seed, **params)
    device = resolve_device(training.get("device", "auto"))
    with (nullcontext(Silent()) if training.get("quiet") else RichProgress()) as progress:
        surrogate = Surrogate(device=device, arch=training.get("arch", "auto"), cache_dir=training.get("cache_dir"),
                              progress=progress)
        return run_attack(name, data, rate, target, seed, surrogate=surrogate, **params)


def print_attack_summary(record: dict[str, Any], out: Path, test_out: Path | None) -> None:
    table = Table(title=f"sanitize attack {record['attack']}", show_header=False)
    table.add_row("samples", str(record["n_samples"]))
    table.add_row("poison", f"{record['n_poison']} (rate {record['params'].get('rate')})")
    if record["n_cover"] or "cover_rate" in record["params"]:
        table.add_row("cover", f"{record['n_cover']} (labels kept)")
    table.add_row("target", "every class -> the next (all-to-all)" if record["all_to_all"] else record["target_class"])
    if record["source_class"] is not None:
        table.add_row("source", record["source_class"])
    table.add_row("output", f"{out} (ground truth: poison.json)")
    if test_out is not None:
        table.add_row("triggered test", f"{test_out} ({record['test']['n_images']} images)")
    for note in record["notes"]:
        table.add_row("note", note)
    stdout.print(table)


def check_json_out(json_out: Path, inputs: list[Path]) -> None:
    """Refuse a ``--json`` path that is a folder or one of the inputs (it would be overwritten)."""
    if json_out.is_dir():
        raise SanitizeError(f"--json {json_out} is a folder; give a file name")
    target = json_out.expanduser().resolve()
    for path in inputs:
        if path.expanduser().resolve() == target:
            raise SanitizeError(f"--json {json_out} is an input of this command; choose another file name")
    if not target.parent.is_dir():
        raise SanitizeError(f"--json {json_out}: parent folder {target.parent} does not exist")


def evaluate_command(
    report: Annotated[Path, typer.Argument(help="report.json of a detector run (or its output folder).")],
    truth: Annotated[Path, typer.Option("--truth", help="poison.json from `sanitize attack`, or a JSON/text "
                                                         "list of poison paths.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")
                        ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table.")] = False,
) -> int:
    """Score a detector report against the ground truth: TPR, FPR, precision, AUROC."""
    from ..evaluate import evaluate_files, format_metric

    if json_out is not None:
        check_json_out(json_out, [report, report / "report.json", truth])
    metrics = evaluate_files(report, truth)
    if json_out is not None:
        try:
            atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8"))
        except OSError as exc:
            raise SanitizeError(f"--json {json_out}: cannot write ({exc})") from None
    if not quiet:
        table = Table(title=f"sanitize evaluate ({metrics['method'] or 'report'})", show_header=False)
        table.add_row("samples", f"{metrics['n_samples']} ({metrics['n_poison']} poison, {metrics['n_clean']} clean"
                      + (f" incl. {metrics['n_cover']} cover" if metrics["n_cover"] else "") + ")")
        table.add_row("flagged", str(metrics["n_flagged"]))
        table.add_row("TPR", f"{format_metric(metrics['tpr'])} ({metrics['true_positives']}/{metrics['n_poison']})")
        table.add_row("FPR", f"{format_metric(metrics['fpr'])} ({metrics['false_positives']}/{metrics['n_clean']})")
        table.add_row("precision", format_metric(metrics["precision"]))
        table.add_row("AUROC", format_metric(metrics["auroc"]))
        if metrics["n_cover"]:
            table.add_row("covers flagged", str(metrics["cover_flagged"]))
        stdout.print(table)
    return 0
