"""Runs a job's steps in order inside its sandbox: the process the worker starts for a job with
``command``, ``[[job.steps]]`` or more than one device (see :func:`marketplace.protocol.bundle.launch_steps`).

Run as a file by the job's Python (``python -u launch.py [--status-fd N] STEP...``), standard library
only. Each ``STEP`` is ``NAME NPROC COUNT ARG...``: the step's name, its number of processes and its
command of ``COUNT`` arguments (``python`` first), each its own argument (never re-quoted).
``python`` in a command is this interpreter; a step with ``nproc`` above 1 runs under torchrun
(``python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node n ...``), whose
rendezvous is on the sandbox's own loopback. The steps share the job's folders, limits, timeout
and metering (they are one process tree). At the first step that fails the launcher stops, writes
``{"step": i, "name": ..., "exit_code": c}`` to the status descriptor (for the worker's reason),
names the step on standard error and exits with the step's status (128 + N for a signal N).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

_FLAGS = frozenset({"-u", "-B", "-O", "-OO"})


def command(argv: list[str], nproc: int) -> list[str]:
    """The process to start for a step: ``python`` is this interpreter; torchrun when ``nproc > 1``."""
    rest = argv[1:] if argv and argv[0] == "python" else argv
    if nproc <= 1:
        return [sys.executable, *rest]
    while rest and rest[0] in _FLAGS:
        rest = rest[1:]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    return [sys.executable, *launcher, *rest]


def plan_args(steps: list[tuple[str, int, list[str]]]) -> list[str]:
    """The arguments that describe ``steps`` ((name, processes, command) each) to :func:`main`."""
    out: list[str] = []
    for name, nproc, argv in steps:
        out += [name, str(nproc), str(len(argv)), *argv]
    return out


def parse_plan(args: list[str]) -> list[tuple[str, int, list[str]]]:
    """The steps of :func:`plan_args`' arguments; ValueError when they are malformed."""
    steps = []
    i = 0
    while i < len(args):
        if i + 3 > len(args):
            raise ValueError("a step needs NAME NPROC COUNT")
        name, nproc, count = args[i], int(args[i + 1]), int(args[i + 2])
        if count < 1 or i + 3 + count > len(args):
            raise ValueError(f"step {name!r}: {count} arguments announced, fewer given")
        steps.append((name, nproc, args[i + 3 : i + 3 + count]))
        i += 3 + count
    return steps


def main(args: list[str]) -> int:
    status_fd = None
    if len(args) >= 2 and args[0] == "--status-fd":
        status_fd, args = int(args[1]), args[2:]
    try:
        steps = parse_plan(args)
    except ValueError as exc:
        print(f"usage: launch.py [--status-fd N] (NAME NPROC COUNT ARG...)...: {exc}", file=sys.stderr)
        return 2
    for index, (name, nproc, step_argv) in enumerate(steps, start=1):
        argv = command(step_argv, nproc)
        on = f" on {nproc} processes (torchrun)" if nproc > 1 else ""
        print(f"flopex: step {index}/{len(steps)} {name}{on}", file=sys.stderr, flush=True)
        try:
            code = subprocess.call(argv, stdin=subprocess.DEVNULL)
        except OSError as exc:
            print(f"flopex: step {index} {name} cannot start: {exc}", file=sys.stderr, flush=True)
            code = 127
        if code == 0:
            continue
        exit_code = 128 - code if code < 0 else code
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        print(f"flopex: step {index}/{len(steps)} {name} {how}; later steps did not run", file=sys.stderr, flush=True)
        if status_fd is not None:
            report = json.dumps({"step": index, "name": name, "exit_code": code}).encode()
            try:
                os.write(status_fd, report + b"\n")
            except OSError:
                pass
        return exit_code
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
