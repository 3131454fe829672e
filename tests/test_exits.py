"""A crash or a signal never looks like a verdict, and leaves nothing behind (sanitize.exits)."""

from __future__ import annotations

import os
import signal

import pytest

import sanitize.pipeline as pipeline
from sanitize.exits import (
    EXIT_INTERNAL,
    TERMINATED_BY_TORCHRUN,
    Terminated,
    catch_termination,
    crash_line,
    stopped,
)
from sanitize.output import staged_output

from .conftest import run_cli


@pytest.fixture
def restore_signals():
    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGHUP")}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Empty data and reserve folders, a private cache dir (where tracebacks go), and the --out path."""
    (tmp_path / "data").mkdir()
    (tmp_path / "reserve").mkdir()
    monkeypatch.setenv("SANITIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SANITIZE_DEBUG", raising=False)
    return tmp_path


def ct_args(root) -> list:
    return ["ct", root / "data", "--reserve", root / "reserve", "--out", root / "out", "-q"]


def test_an_internal_error_exits_3_with_one_line_and_a_traceback_file(inputs, monkeypatch, capsys,
                                                                      restore_signals) -> None:
    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline, "load_inputs", broken)
    assert run_cli(*ct_args(inputs)) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("internal error: ZeroDivisionError: division by zero")
    assert "Traceback" not in err and "not a verdict" in err
    logs = list((inputs / "cache" / "crashes").glob("sanitize-crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "broken" in logs[0].read_text()
    assert not (inputs / "out").exists()


def test_sanitize_debug_prints_the_traceback_too(inputs, monkeypatch, capsys, restore_signals) -> None:
    monkeypatch.setenv("SANITIZE_DEBUG", "1")
    monkeypatch.setattr(pipeline, "load_inputs", lambda *a, **k: [][0])
    assert run_cli(*ct_args(inputs)) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("internal error: IndexError")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_exits_128_plus_its_number_with_one_line(inputs, monkeypatch, capsys, name: str,
                                                                      restore_signals) -> None:
    number = getattr(signal, name)
    monkeypatch.setattr(pipeline, "load_inputs", lambda *a, **k: os.kill(os.getpid(), number))
    assert run_cli(*ct_args(inputs)) == 128 + number
    assert capsys.readouterr().err.strip() == f"terminated by {name}: nothing was written"
    assert not (inputs / "out").exists()


def test_a_termination_signal_under_torchrun_says_where_it_comes_from(monkeypatch) -> None:
    """torchrun's agent sends SIGTERM to every process once one fails; the line says so."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    line, code = stopped(Terminated(signal.SIGTERM))
    assert code == 143 and line == f"terminated by SIGTERM ({TERMINATED_BY_TORCHRUN}): nothing was written"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert stopped(Terminated(signal.SIGTERM))[0] == "terminated by SIGTERM: nothing was written"


def test_a_signal_while_outputs_are_staged_leaves_no_staging_folder(tmp_path, restore_signals) -> None:
    catch_termination()
    out = tmp_path / "out"
    with pytest.raises(Terminated), staged_output(out) as staging:
        (staging / "report.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []


def test_the_crash_line_is_one_line_whatever_the_message() -> None:
    line = crash_line(RuntimeError("first\nsecond"), None)
    assert "\n" not in line and "first" in line and "second" not in line and "could not be written" in line
    assert crash_line(MemoryError(), None).startswith("internal error: MemoryError (")


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
@pytest.mark.parametrize("command", ["ct", "asset", "scan", "attack", "demo"])
def test_every_command_refuses_a_seed_outside_the_range_before_any_work(inputs, capsys, command: str,
                                                                        seed: str) -> None:
    args = {"attack": ["attack", "badnet", inputs / "data", inputs / "out"],
            "demo": ["demo", "--out", inputs / "out", "-q"]}.get(command, [command, *ct_args(inputs)[1:]])
    assert run_cli(*args, "--seed", seed) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "--seed" in err
    assert not (inputs / "out").exists()


@pytest.mark.parametrize("case", ["rate nan", "out is a file"])
def test_demo_refuses_bad_options_before_creating_anything(tmp_path, capsys, case: str) -> None:
    out = tmp_path / "demo"
    if case == "out is a file":
        out.write_text("mine")
    args = ["demo", "--out", out, "-q"] + (["--rate", "nan"] if case == "rate nan" else [])
    assert run_cli(*args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (out.read_text() == "mine") if case == "out is a file" else not out.exists()


@pytest.mark.parametrize(("name", "code", "line"), [("SIGINT", 130, "interrupted: nothing was written"),
                                                     ("SIGTERM", 143, "terminated by SIGTERM: nothing was written")])
def test_a_signal_while_the_command_line_loads_is_one_line(name: str, code: int, line: str) -> None:
    """Loading torch takes seconds (a detector command loads it when it starts); a signal then is
    one line too, not a traceback and Python's exit code 1."""
    import subprocess
    import sys
    import time

    script = ("import sys; from sanitize.entry import main; "
              "sys.argv = ['sanitize', 'ct', 'nope', '--reserve', 'nope', '--out', 'nope-out']; main()")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # the command line is in (a few tenths of a second), torch is not yet (over a second)
    proc.send_signal(getattr(signal, name))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and err.strip() == line and "Usage" not in out


def test_bare_sanitize_prints_the_usage_and_no_empty_error_line(capsys) -> None:
    assert run_cli() == 2
    captured = capsys.readouterr()
    assert "Usage" in captured.out and captured.err.strip() == ""


def test_library_warnings_go_to_the_report_not_to_stderr(tmp_path, capsys, monkeypatch) -> None:
    """stderr carries one line when a run fails and nothing else; warnings raised while the data is
    read and inspected (numpy's empty-slice mean here, for real) become notes in report.json."""
    import warnings

    import numpy as np

    from sanitize.data import examples
    from sanitize.output import write_image_subset
    from sanitize.report.build import read_report
    from sanitize.result import DetectionResult

    monkeypatch.delenv("SANITIZE_DEBUG", raising=False)
    digits = examples.digits().subset(range(30))
    write_image_subset(digits, range(30), tmp_path / "data")

    def detect(data, _reserve, _progress) -> DetectionResult:
        np.mean(np.zeros(0))  # RuntimeWarning: Mean of empty slice
        np.mean(np.zeros(0))  # the same warning again: one note
        warnings.warn("a second kind", UserWarning, stacklevel=1)
        return DetectionResult("test", np.zeros(len(data)), np.zeros(len(data), bool), [])

    report, _ = pipeline.run(detect, tmp_path / "data", None, pipeline.RunOptions(tmp_path / "out", quiet=True))
    code = report["summary"]["gate"]["exit_code"]
    assert code == 0 and capsys.readouterr().err == ""
    notes = [n for n in read_report(tmp_path / "out" / "report.json")["summary"]["notes"]
             if n.startswith("library warning")]
    assert sum("Mean of empty slice" in n for n in notes) == 1 and sum("a second kind" in n for n in notes) == 1
