"""The warm server (``python -m tunelab.warm_server``): imports the libraries of a run once, then
forks a child per request that becomes ``tunelab ARGV``. Its parent's side and the protocol are
in tunelab.warm."""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import sys
import threading

from tunelab.launch import die_with_parent

PRELOAD = ("torch", "transformers", "datasets", "accelerate", "tunelab.build", "tunelab.runs", "tunelab.loop",
           "tunelab.train_command", "tunelab.evaluate", "tunelab.methods", "tunelab.tasks", "tunelab.cli")
"""What the server imports once: what every ``tunelab train`` or ``tunelab eval`` imports."""


def serve() -> None:
    """Import once, then fork a child per request until the input ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run; the server ends with its parent
    die_with_parent()
    for name in PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a thread's locks would be copied held into every child
        raise SystemExit(f"tunelab.warm_server: {threading.active_count()} threads after the imports; "
                         "cannot fork safely")
    gc.freeze()  # the imported objects stay shared with the children instead of copied by their collector
    server_pid = os.getpid()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            become(request, server_pid)  # never returns
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"ended {os.waitstatus_to_exitcode(status)}", flush=True)


def become(request: dict, server_pid: int) -> None:
    """In the forked child: the run's process, as ``tunelab`` started cold with the request's
    environment, directory and output would be. Ends the process (SystemExit, or the run's error
    with its traceback) so that exit handlers run as in any process."""
    die_with_parent()
    if os.getppid() != server_pid:  # the server died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # the parent reads progress from the log as it grows
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as `python -m` started here would have it
    sys.argv = ["tunelab", *request["argv"]]
    import random

    import numpy

    random.seed()  # a cold process draws fresh seeds; the server's would be shared by every child
    numpy.random.seed()
    from tunelab import cli

    sys.exit(cli.main(request["argv"]))


if __name__ == "__main__":
    serve()
