"""One process of a distributed test job, launched by ``torchrun`` from ``tests/test_distributed.py``.

Runs ``transferkit`` commands one after the other (arguments separated by ``---``), as ``torchrun -m transferkit``
would run one, and reports each command's exit code and seconds on stdout (``command N: exit CODE in S s``).

Faults for the failure tests come from the environment: ``TK_FAULT=RANK:EPOCH:KIND`` makes process RANK, when its
epoch EPOCH (0-based, i.e. after EPOCH completed epochs) starts in the last command, either raise a user error
(``error``: as if it met a corrupt input nobody else sees) or die at once (``kill``: SIGKILL); it first writes the
time to ``TK_FAULT_FILE``.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import transferkit.api as api
import transferkit.cli as cli
from transferkit.errors import TransferKitError
from transferkit.training import Callback


class Fault(Callback):
    def __init__(self, epoch: int, kind: str) -> None:
        self.epoch, self.kind = epoch, kind

    def on_epoch_start(self, state) -> None:
        if state.epoch != self.epoch:
            return
        with open(os.environ["TK_FAULT_FILE"], "w") as handle:
            handle.write(str(time.time()))
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise TransferKitError("Cannot read image broken.png (injected: only this process sees it). Fix: replace "
                               "the file.")


def with_fault(train, epoch: int, kind: str):
    def faulty(*args, callbacks=(), **kwargs):
        return train(*args, callbacks=[*callbacks, Fault(epoch, kind)], **kwargs)

    return faulty


def main(argv: list[str]) -> int:
    commands, current = [], []
    for arg in argv:
        if arg == "---":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    cli.leave = lambda: None  # the process group lives until the last command
    train = api.train
    code = 0
    for number, command in enumerate(commands, start=1):
        fault = os.environ.get("TK_FAULT", "")
        if fault and number == len(commands) and int(fault.split(":")[0]) == int(os.environ["RANK"]):
            api.train = with_fault(train, int(fault.split(":")[1]), fault.split(":")[2])
        started = time.perf_counter()
        try:
            cli.main(command)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        print(f"command {number}: exit {code} in {time.perf_counter() - started:.1f} s", flush=True)
        print(f"command {number}: exit {code}", file=sys.stderr, flush=True)
        if code:
            return code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
