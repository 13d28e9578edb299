"""Training processes forked from a warm server instead of started cold.

Every run of a comparison, a sweep or a tuned comparison is its own ``tunelab`` process. A cold
process spends about 4 s importing torch, transformers, datasets and accelerate before its
first step; a tiny run trains in less. While a comparison's worker runs its jobs it keeps one
server process (``python -m tunelab.warm_server``) that has imported them once, never computes, and
forks a child for each run: the child sets up the run's environment, working directory, output
(the run's log) and arguments, then is ``tunelab`` as a cold process would be.

What stays as with a cold process: the run's exit code (or minus the signal that killed it), its
death with the comparison (the server dies with its parent, each child with the server), Ctrl-C
(the child gets it; the server ignores it). A run whose environment differs from the server's in
more than PER_RUN gets a new server, since libraries read some variables at import. Its
``ru_maxrss`` starts at the server's resident size (shared pages count), about what a cold run
has once it imported the same; a cold child instead starts at its parent's, since ``exec``
keeps the high-water mark of the process it replaced (a run started from a notebook or a
pytest process reported their memory as its own). What differs: stdin is /dev/null, the
output is line-buffered rather than unbuffered, and the children share the server's hash seed
(every run seeds its own generators). ``TUNELAB_WARM_START=0`` turns this off (every run
cold); it is off where there is no ``fork`` worth trusting (only Linux uses it) and for
launcher commands (torchrun's ranks).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys

from tunelab.launch import die_with_parent

_held: _Lazy | None = None
"""The server of this process (started at its first run) while :func:`kept` holds one."""

PER_RUN = ("TUNELAB_TRIAL", "PYTHONUNBUFFERED")
"""Variables a run reads when it starts, never at import: they may differ between runs of one server."""


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("TUNELAB_WARM_START", "1") != "0"


def imported_with(env: dict[str, str]) -> dict[str, str]:
    """What of a run's environment its libraries may have read at import."""
    return {k: v for k, v in env.items() if k not in PER_RUN}


class Server:
    """The parent's side: a ``python -m tunelab.warm_server`` process and its line protocol
    (request: one JSON line; answers: ``started PID``, then ``ended CODE``; tunelab.warm_server)."""

    def __init__(self, env: dict[str, str]):
        self.env = imported_with(env)
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.warm_server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env=env, preexec_fn=die_with_parent)
        self.pending = b""
        self.failed = False
        """True once it could not start a run: the runs after it start cold."""

    def serves(self, env: dict[str, str]) -> bool:
        """Alive, and imported under the environment a run with ``env`` would import under."""
        return self.proc.poll() is None and self.env == imported_with(env)

    def answer(self, timeout: float | None) -> str | None:
        """The server's next line; None after ``timeout`` seconds without one; EOFError when it ended."""
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise EOFError("the warm server ended")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def start(self, argv: list[str], env: dict[str, str], log_file) -> int:
        """Fork a child that runs ``tunelab ARGV`` with ``env``, its output appended to ``log_file``; its pid."""
        request = {"argv": argv, "env": env, "cwd": os.getcwd(), "log": os.path.abspath(log_file)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        line = self.answer(None)
        if not line.startswith("started "):
            raise EOFError(f"the warm server answered {line!r}")
        return int(line.split()[1])

    def ended(self, timeout: float | None) -> int | None:
        """The child's exit code once it ended (or minus the signal that killed it); None while it runs."""
        line = self.answer(timeout)
        return None if line is None else int(line.split()[1])

    def close(self) -> None:
        """End the server; between runs it holds nothing to save (a run it forked dies with it)."""
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@contextlib.contextmanager
def kept():
    """Hold a warm server for the runs started inside (one, started at the first run); nested: the outer one."""
    global _held
    if _held is not None or not enabled():
        yield
        return
    _held = _Lazy()
    try:
        yield
    finally:
        held, _held = _held, None
        held.close()


class _Lazy:
    """A server started at the first run, and again when it died or the environment changed;
    none once one could not start a run (its imports fail here: each run would pay for them twice)."""

    def __init__(self):
        self.server: Server | None = None

    def get(self, env: dict[str, str]) -> Server | None:
        if self.server is not None and self.server.failed:
            return None
        if self.server is None or not self.server.serves(env):
            self.close()
            self.server = Server(env)
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def server(env: dict[str, str] | None = None) -> Server | None:
    """The held server for runs with ``env`` (this process's by default; started now if need
    be), or None: every run starts cold."""
    return _held.get(dict(os.environ) if env is None else env) if _held is not None else None


def run(warm_server: Server, argv: list[str], env: dict[str, str], log_file, on_output) -> int | None:
    """``tunelab ARGV`` forked by ``warm_server``, its output appended to ``log_file`` and handed
    to ``on_output`` (bytes) as it grows; its exit code, or None where the server could not start
    it (the caller starts it cold)."""
    offset = os.path.getsize(log_file) if os.path.exists(log_file) else 0
    try:
        pid = warm_server.start(argv, env, log_file)
    except (EOFError, OSError):
        warm_server.failed = True
        return None
    code = None
    try:
        while code is None:
            code = warm_server.ended(timeout=0.25)
            offset = _read_on(log_file, offset, on_output)
        return code
    except EOFError:  # the server died, and its child with it
        with open(log_file, "ab") as log:
            log.write(b"\nerror: the warm server of this run ended unexpectedly; run the command again\n")
        return 1
    except BaseException:  # an interrupt, or an error while reading the output: the run ends with it
        if code is None:  # still running (once ended, its pid may be another process's)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(EOFError):
                warm_server.ended(None)
        raise


def _read_on(log_file, offset: int, on_output) -> int:
    with open(log_file, "rb") as log:
        log.seek(offset)
        chunk = log.read()
    if chunk:
        on_output(chunk)
    return offset + len(chunk)
