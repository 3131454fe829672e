"""``torchrun -m sanitize ct|asset|scan``: two CPU processes (gloo) share the work; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sanitize.exits import TERMINATED_BY_TORCHRUN
from sanitize.nn.distributed import World, data_parallel, gather_rows, loss_scale

from .conftest import run_cli, tree_digest

REPO = Path(__file__).resolve().parents[1]


def torchrun(*args: object, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m sanitize ARGS`` (a free port each time)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "sanitize", *map(str, args)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def flagged(report_path: Path) -> set[str]:
    return {s["path"] for s in json.loads(report_path.read_text())["samples"] if s["flagged"]}


def test_two_processes_flag_what_one_does(digits_folders, ct_digits_run, tmp_path) -> None:
    """Same suspected class, and flags within 1 % of the samples of the single-process run.

    On the CPU batch normalisation is per rank (PyTorch synchronises it on GPUs only), so the two
    runs are close, not equal: 2 of 1,347 flags differed when this was written.
    """
    data, reserve, truth = digits_folders
    single_out, single_code, _ = ct_digits_run
    before = tree_digest(data)
    out = tmp_path / "cleaned"
    done = torchrun("ct", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--json-only")
    assert done.returncode == single_code == 1  # rank 0's verdict (poison flagged), which torchrun reports
    assert tree_digest(data) == before
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0 alone speaks for the run
    report = json.loads((out / "report.json").read_text())
    single = json.loads((single_out / "report.json").read_text())
    assert report["summary"]["settings"]["processes"] == 2
    assert report["summary"]["suspected_classes"] == single["summary"]["suspected_classes"] == ["0"]
    ours, theirs = flagged(out / "report.json"), flagged(single_out / "report.json")
    assert len(ours ^ theirs) <= 0.01 * len(report["samples"])
    assert len(ours & truth) >= 0.9 * len(truth) and len(ours - truth) <= 0.05 * (len(report["samples"]) - len(truth))
    assert printed[0]["summary"]["n_flagged"] == len(ours)


PEER_LINE = "stopped: another process of this torchrun run failed"
SIGNAL_LINE = f"terminated by SIGTERM ({TERMINATED_BY_TORCHRUN}): nothing was written"
# What rank 0 runs while rank 1 fails, and the lines it may end with.
RANK_0_WHILE_RANK_1_FAILS = {
    # in the collective that loses its peer: that usually stops it first, but torchrun's SIGTERM
    # can win the race (CI once saw it), so either line
    "waiting": ("", (PEER_LINE, SIGNAL_LINE)),
    # busy outside any collective, so torchrun's SIGTERM reaches it first
    "busy": ("if os.environ.get('RANK') == '0':\n"
             "    import time\n"
             "    import sanitize.nn.engine as engine\n"
             "    engine.train_supervised = lambda *args, **kwargs: time.sleep(120)\n",
             (SIGNAL_LINE,)),
}


@pytest.mark.parametrize("rank_0", sorted(RANK_0_WHILE_RANK_1_FAILS))
def test_a_crashed_rank_ends_the_run_without_output(digits_folders, tmp_path, rank_0: str) -> None:
    """Rank 1 fails inside training: it prints one line, rank 0 is stopped with a line that says
    so (whether its collective or torchrun's signal stops it first), and no --out exists."""
    data, reserve, _ = digits_folders
    rank_0_code, rank_0_lines = RANK_0_WHILE_RANK_1_FAILS[rank_0]
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import sanitize.nn.engine as engine\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    engine.train_supervised = broken\n" + rank_0_code)
    out = tmp_path / "cleaned"
    done = torchrun("ct", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--quiet",
                    env={"PYTHONPATH": os.pathsep.join([str(inject), str(REPO)]), "SANITIZE_CACHE": str(tmp_path)})
    assert done.returncode != 0
    assert not out.exists() and not list(tmp_path.glob(".cleaned.staging-*"))
    ours = [line for line in done.stderr.splitlines() if "injected failure" in line]
    assert len(ours) == 1 and ours[0].startswith("internal error: RuntimeError")
    assert any(line in done.stderr for line in rank_0_lines), done.stderr[-3000:]
    assert f"{os.sep}sanitize{os.sep}" not in "\n".join(line for line in done.stderr.splitlines()
                                                        if line.strip().startswith("File "))


def test_asset_in_two_processes(digits_folders, tmp_path) -> None:
    data, reserve, truth = digits_folders
    out = tmp_path / "cleaned"
    done = torchrun("asset", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--quiet")
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["settings"]["processes"] == 2 and report["summary"]["suspected_classes"] == ["0"]
    ours, n = flagged(out / "report.json"), len(report["samples"])
    assert len(ours & truth) >= 0.9 * len(truth) and len(ours - truth) <= 0.05 * (n - len(truth))


def test_scan_in_two_processes_trains_once_and_reuses_the_model(digits_folders, tmp_path) -> None:
    """Every rank must agree that the cached model exists before any loads it (a rank that trained
    while the other loaded would wait forever): the second run loads it on both."""
    data, _, _ = digits_folders
    env = {"SANITIZE_CACHE": str(tmp_path / "cache")}
    first = torchrun("scan", "spectral", data, "--out", tmp_path / "one", "--device", "cpu", "--quiet", env=env)
    second = torchrun("scan", "spectral", data, "--out", tmp_path / "two", "--device", "cpu", "--quiet", env=env)
    assert first.returncode == second.returncode == 1  # spectral removes a budget from every class
    one, two = (json.loads((tmp_path / name / "report.json").read_text())["summary"] for name in ("one", "two"))
    assert "train model" in one["timings"] and "load cached model" in two["timings"]
    assert one["settings"]["processes"] == 2 and flagged(tmp_path / "one" / "report.json") == \
        flagged(tmp_path / "two" / "report.json")
    assert [p.name.endswith("-2p.pt") for p in (tmp_path / "cache" / "models").iterdir()] == [True]


@pytest.mark.parametrize("command", ["attack", "demo", "bench", "evaluate"])
def test_commands_that_do_not_share_work_refuse_torchrun(command: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_cli(command, "whatever") == 2
    assert f"torchrun: {command} runs in one process" in capsys.readouterr().err


def test_shards_cover_every_row_once() -> None:
    for n in (0, 1, 7, 512, 1347):
        for size in (1, 2, 3, 8):
            parts = [World(r, size).shard(n) for r in range(size)]
            assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == n
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_one_process_is_left_alone() -> None:
    model = torch.nn.Linear(3, 2)
    rows = torch.arange(12.0).view(4, 3)
    assert data_parallel(model) is model and gather_rows(rows, 4) is rows and loss_scale(5, 5) == 1.0
