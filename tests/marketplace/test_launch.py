"""The launcher that runs a job's steps: its argument format, torchrun's command line, and running
real steps in order, stopping at the first failure with its status reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from marketplace.launch import command, main, parse_plan, plan_args


def test_plan__round_trips_arguments_of_any_text() -> None:
    steps = [("prep", 1, ["python", "p.py", 'a "quoted" {x}', "", "ünï"]), ("train", 4, ["python", "-m", "pkg"])]
    assert parse_plan(plan_args(steps)) == steps


@pytest.mark.parametrize("args", [["a", "1"], ["a", "1", "3", "python"], ["a", "1", "0"], ["a", "x", "1", "python"]])
def test_plan__malformed_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_plan(args)
    assert main(args) == 2


def test_command__python_is_this_interpreter_and_several_processes_use_torchrun() -> None:
    assert command(["python", "-u", "t.py", "--x"], 1) == [sys.executable, "-u", "t.py", "--x"]
    assert command(["python", "-u", "t.py", "--x"], 2) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "t.py",
        "--x",
    ]


def test_main__runs_steps_in_order_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10)); sys.exit(int(sys.argv[3]))"
    steps = [
        ("one", 1, ["python", "-c", write, str(log), "one", "0"]),
        ("two", 1, ["python", "-c", write, str(log), "two", "4"]),
        ("three", 1, ["python", "-c", write, str(log), "three", "0"]),
    ]
    read, written = os.pipe()
    try:
        assert main(["--status-fd", str(written), *plan_args(steps)]) == 4
        report = os.read(read, 4096)
    finally:
        os.close(read)
        os.close(written)
    assert log.read_text() == "one\ntwo\n"
    assert report == b'{"step": 2, "name": "two", "exit_code": 4}\n'


def test_main__a_step_killed_by_a_signal_exits_128_plus_it(tmp_path: Path) -> None:
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert main(plan_args([("dies", 1, ["python", "-c", kill])])) == 128 + 15
