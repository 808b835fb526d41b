"""Runs a job's steps in order inside its sandbox: the process the worker starts for a job with
``command``, ``[[job.steps]]`` or more than one device (see :func:`marketplace.protocol.bundle.launch_steps`).

Run as a file by the job's Python (``python -u launch.py [--status-fd N] PLAN``), standard library
only. ``PLAN`` is JSON: ``{"steps": [{"name": ..., "argv": ["python", ...], "nproc": n}, ...]}``.
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


def main(args: list[str]) -> int:
    status_fd = None
    if len(args) >= 2 and args[0] == "--status-fd":
        status_fd, args = int(args[1]), args[2:]
    if len(args) != 1:
        print("usage: launch.py [--status-fd N] PLAN", file=sys.stderr)
        return 2
    steps = json.loads(args[0])["steps"]
    for index, step in enumerate(steps, start=1):
        name, nproc = step["name"], int(step.get("nproc", 1))
        argv = command(list(step["argv"]), nproc)
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
