"""The processes a flow starts, and what a stop does to them; which failures a retry can heal.

Each command (`dvc repro`, `dvc exp run`, a matrix item) runs in a process group of its own, so DVC, the stage
under it and whatever the stage starts are one unit. On SIGTERM or SIGINT the flow forwards that signal to every
group it runs, gives them ``grace_s`` to end (a stage writes through atomic_output: an interrupted one leaves
nothing DVC would take as finished), then SIGKILLs what is left, and exits 128 + the signal (143, 130). A second
signal skips the grace. A Ray worker's group is recorded under the workspace, so the driver stops what a cancelled
worker could not. If the temporary Prefect API's server dies mid-run, the run says so in one line, stops its groups
and exits 1 at once (`lose_api`) instead of retrying every call for minutes. Nothing here imports Prefect at module
level: flows.evidence runs without it.

Retries: a stage ends with its own exit code (infosift/errors.py): EXIT_BAD_INPUT (bad params, data, files) fails
the same way again and is not retried; EXIT_TRANSIENT (network, timeout, memory) and a kill by a signal (the
kernel's out-of-memory killer, a node going away) may heal and are; an uncaught exception (exit 1) is a bug that
a rerun repeats. DVC reports the stage's code as "exited with N".
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infosift.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT

SIGNALS = (signal.SIGTERM, signal.SIGINT)
STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)\s*$")
DVC_LOCKED = "Unable to acquire lock"


class Stopped(KeyboardInterrupt):
    """The run was told to stop (SIGTERM or SIGINT). A KeyboardInterrupt, so every layer (Prefect included)
    unwinds as it does for Ctrl-C and marks the run crashed; ``code`` is the exit status, 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@dataclass
class Policy:
    """params.yaml `flow`: how often and how long apart a transient failure is retried; a stop's grace."""

    retries: int = 2
    retry_delay_s: float = 30.0
    stop_grace_s: float = 20.0


def policy(root: Path) -> Policy:
    """The `flow` block of ``root``/params.yaml (defaults where absent); a bad value is a StageError naming it."""
    from stages._common import check_keys, check_param, params

    path = root / "params.yaml"
    section = (params(path=str(path)) if path.exists() else {}).get("flow") or {}
    check_keys(section, "flow", Policy.__dataclass_fields__)
    default = Policy()
    return Policy(
        retries=check_param(section.get("retries", default.retries), "flow.retries", int, low=0),
        **{
            key: check_param(section.get(key, getattr(default, key)), f"flow.{key}", float, low=0)
            for key in ("retry_delay_s", "stop_grace_s")
        },
    )


@dataclass
class Failure:
    """Why a command failed and whether running it again may help."""

    code: int
    transient: bool
    why: str


def classify(code: int, output: list[str]) -> Failure:
    """What a failed `dvc` command's exit ``code`` and last ``output`` lines say: the stage's own exit code
    (DVC prints "exited with N"), a kill by a signal, or DVC's workspace lock held by another process."""
    stage_code = next((int(m[1]) for line in reversed(output) if (m := STAGE_EXIT.search(line))), None)
    if stage_code is None:
        if any(DVC_LOCKED in line for line in output):
            return Failure(code, True, "another DVC process holds the workspace lock; it may finish")
        if code < 0:  # dvc itself was killed (its own errors exit 255, not a signal)
            return Failure(code, True, f"dvc was killed by {_signal_name(code)}")
        return Failure(code, False, f"dvc failed (exit {code}) before or outside a stage's command")
    return classify_stage(stage_code)


def classify_stage(stage_code: int) -> Failure:
    """What a stage command's own exit code says (run by DVC, or directly as flows/plan.py runs it)."""
    if stage_code == EXIT_BAD_INPUT:
        return Failure(
            stage_code, False, "the stage's own error (bad params, data or files): it fails the same way again"
        )
    if stage_code == EXIT_TRANSIENT:
        return Failure(stage_code, True, "the stage reported a failure that may heal (network, timeout, memory)")
    if stage_code < 0 or 128 < stage_code <= 128 + 64:  # -N from Python, 128 + N from a shell
        name = _signal_name(stage_code)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return Failure(stage_code, True, f"the stage was killed by {name}{hint}")
    return Failure(stage_code, False, f"the stage crashed (exit {stage_code}): a bug a rerun repeats")


def _signal_name(code: int) -> str:
    number = -code if code < 0 else code - 128
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Supervisor:
    """The running process groups and the stop in progress: one per process, shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[int, subprocess.Popen] = {}
        self.signum: int | None = None
        self.grace_s = Policy.stop_grace_s
        self.installed = False
        self.flow_ran = False  # a flow body started: the Prefect API was there, and may be gone at exit
        self.closing = False  # the run is ending without the main thread (the Prefect API was lost)
        self.records: set[Path] = set()  # folders where other processes record the groups they run for this run

    def forward(self, signum: int) -> None:
        with self.lock:
            groups = list(self.groups)
        for pgid in groups:
            _killpg(pgid, signum)


_sup = _Supervisor()


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _pgid_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of ``proc``'s group is left (the leader reaped first: a zombie counts as gone)."""
    proc.poll()
    return _pgid_alive(proc.pid)


def stop_group(proc: subprocess.Popen, signum: int = signal.SIGTERM, grace_s: float | None = None) -> None:
    """Send ``signum`` to ``proc``'s group, wait up to ``grace_s`` for all of it to end, then SIGKILL the rest."""
    grace_s = _sup.grace_s if grace_s is None else grace_s
    _killpg(proc.pid, signum)
    deadline = time.monotonic() + grace_s
    try:
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:  # also when a second signal interrupts the wait
        if _group_alive(proc):
            _killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _group_alive(proc) and time.monotonic() < deadline:
                time.sleep(0.02)


def stream(
    cmd: list[str] | str, cwd: Path, env: dict, emit: Callable[[str], None], record: Path | None = None
) -> tuple[int, list[str]]:
    """Run ``cmd`` in a process group of its own, hand each output line to ``emit``; its exit code and last lines.

    If anything interrupts the wait (a stop, a cancelled task), the group gets the signal that stopped the run
    (SIGTERM otherwise), its grace, then SIGKILL, before the interruption goes on: nothing is left running. The
    pipe is read in a thread and this one waits in short steps: a Ray cancel (an interrupt with no signal behind
    it) is only seen between steps, never inside a blocking read. ``record``: a folder where the group's id is
    kept while it runs (``stop_recorded``), for a process that did not start it (the Ray driver) to stop it.
    """
    with _sup.lock:  # no new group once the run is closing (`lose_api` takes its list of groups under this lock)
        closing = _sup.closing
        if not closing:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                shell=isinstance(cmd, str),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            _sup.groups[proc.pid] = proc
    if closing:
        _park()
    mark = record / f"{socket.gethostname()}-{proc.pid}" if record is not None else None
    tail: deque[str] = deque(maxlen=40)
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_pump, args=(proc, lines), name=f"stream-{proc.pid}", daemon=True)
    reader.start()
    try:
        if mark is not None:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(" ".join(cmd) if isinstance(cmd, list) else cmd)
        while (line := _next_line(lines)) is not None:
            line = line.rstrip()
            if line and "\r" not in line and not _sup.closing:  # progress-bar redraws are for terminals
                tail.append(line)
                emit(line)
        while (code := proc.poll()) is None:
            time.sleep(0.05)
        if _sup.closing:  # the run is ending without this thread (closing): no retry, no more output
            _park()
        return code, list(tail)
    except BaseException:
        stop_group(proc, _sup.signum or signal.SIGTERM)
        raise
    finally:
        with _sup.lock:
            _sup.groups.pop(proc.pid, None)
        if mark is not None:
            mark.unlink(missing_ok=True)
        reader.join(timeout=1)
        if not reader.is_alive() and proc.stdout is not None:  # else a process outside the group holds the pipe
            proc.stdout.close()


def _pump(proc: subprocess.Popen, lines: queue.SimpleQueue) -> None:
    """Copy ``proc``'s output into ``lines``, then None at its end."""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
    except (OSError, ValueError):  # the pipe closed under the read
        pass
    finally:
        lines.put(None)


def _next_line(lines: queue.SimpleQueue) -> str | None:
    """The next line, waiting in steps of 0.2 s (each one a chance for a pending interrupt to be raised)."""
    while True:
        try:
            return lines.get(timeout=0.2)
        except queue.Empty:
            continue


def _park() -> None:
    """Wait for the end of the process that `closing` is bringing about (a signal still interrupts this)."""
    while True:
        time.sleep(1)


def stop_recorded(record: Path, signum: int | None = None, grace_s: float | None = None) -> None:
    """Stop the groups that `stream` recorded in ``record`` on this host (started by other processes of the run,
    as Ray workers): ``signum`` (the stop's, else SIGTERM), ``grace_s``, then SIGKILL. A group whose record is
    gone has ended; groups on other hosts are their own worker's to stop."""
    signum = signum or _sup.signum or signal.SIGTERM
    grace_s = _sup.grace_s if grace_s is None else grace_s
    marks = list(record.glob(f"{socket.gethostname()}-*")) if record.is_dir() else []
    groups = {int(m.name.rsplit("-", 1)[1]): m for m in marks if m.name.rsplit("-", 1)[1].isdigit()}

    def alive() -> list[int]:
        return [g for g, m in groups.items() if m.exists() and _pgid_alive(g)]

    for pgid in alive():
        _killpg(pgid, signum)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in alive():
        _killpg(pgid, signal.SIGKILL)


def stop_all() -> None:
    """Stop every group still running (after a stop that landed outside `stream`), and those that Ray workers on
    this host recorded for this run (`recording`): signal, grace, SIGKILL."""
    with _sup.lock:
        procs, records = list(_sup.groups.values()), list(_sup.records)
    for proc in procs:
        stop_group(proc, _sup.signum or signal.SIGTERM)
    for record in records:
        stop_recorded(record)


@contextmanager
def recording(record: Path) -> Iterator[Path]:
    """While active, a stop of this process (or the loss of its Prefect API) also stops the groups recorded in
    ``record`` (`stream`'s ``record``, written by the Ray workers that run this run's items)."""
    with _sup.lock:
        _sup.records.add(record)
    try:
        yield record
    finally:
        with _sup.lock:
            _sup.records.discard(record)


def _on_signal(signum: int, frame: object) -> None:
    """First signal: forward it to the running groups and raise Stopped here. A second one: no more grace."""
    if _sup.signum is None:
        _sup.signum = signum
        _sup.forward(signum)
        _fail_fast_api()
        _quiet_lost_api()  # Ctrl-C reaches the temporary API too: exit_process says so once, Prefect not at all
        raise Stopped(signum)
    _sup.forward(signal.SIGKILL)
    print(f"{signal.Signals(signum).name} again: stopping now", file=sys.stderr, flush=True)
    stop_prefect_server()
    os._exit(128 + _sup.signum)


def take_signals() -> None:
    """(Re)install the stop handler for SIGTERM and SIGINT where `handling_signals` is active, in the main thread.

    Called at the start of each flow body: Prefect's engine puts its own SIGTERM handler in place for a flow run,
    which raises in the main thread but knows nothing of the stage's process group.
    """
    _sup.flow_ran = True
    if _sup.installed and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _on_signal)


@contextmanager
def handling_signals(grace_s: float | None = None) -> Iterator[None]:
    """SIGTERM and SIGINT stop the run (see the module's docstring) while this is active; restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _sup.signum, _sup.installed = None, True
    if grace_s is not None:
        _sup.grace_s = grace_s
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    watching = threading.Event()
    threading.Thread(target=_watch_api, args=(watching,), name="prefect-api-watch", daemon=True).start()
    try:
        yield
    finally:
        watching.set()
        try:
            stop_all()
        finally:
            _sup.installed = False
            for s, handler in previous.items():
                signal.signal(s, handler)


def set_grace(grace_s: float) -> None:
    """The grace a stop gives each group before SIGKILL (params.yaml flow.stop_grace_s)."""
    _sup.grace_s = grace_s


def grace_s() -> float:
    """The grace a stop gives each group before SIGKILL."""
    return _sup.grace_s


def stopped() -> int | None:
    """The signal that stopped this run, or None."""
    return _sup.signum


def stop_prefect_server() -> None:
    """Stop the temporary Prefect API this process started (Prefect would at exit), without waiting on it."""
    for server in _temporary_servers():
        proc = server.server_process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()


def _fail_fast_api() -> None:
    """No more retries of Prefect API calls in this process: after a stop, a gone API (Ctrl-C reaches the temporary
    server too) would otherwise be retried with backoff for a minute per call. A live API answers the first try.
    Both the settings in force here and the process-wide ones: the stop may land inside a `temporary_settings`
    (flows/parallel.py), and the calls made after it unwinds read the outer ones."""
    if "prefect.settings" in sys.modules:
        try:
            current = [sys.modules["prefect.settings"].get_current_settings()]
            if (context := sys.modules.get("prefect.context")) is not None:
                current.append(context.GLOBAL_SETTINGS_CONTEXT.settings)
            for settings in current:
                settings.client.max_retries = 0
        except Exception:  # a settings layout this Prefect does not have: only slower
            pass


def _quiet_lost_api() -> None:
    """Prefect's background senders (events, logs) print a failure per item once the API is gone; the project
    says it once instead. (Its log sender writes "--- Error logging to API ---" unless logging.raiseExceptions is
    off.)"""
    import logging

    for name in ("prefect._internal", "prefect.events"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.raiseExceptions = False
    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        if _drop_lost_api not in handler.filters:
            handler.addFilter(_drop_lost_api)


def _drop_lost_api(record: object) -> bool:
    """A logging filter: no record of a failure to reach the API (the engine's traceback of a state it could not
    send on the way out of a stop)."""
    import httpx

    exc = getattr(record, "exc_info", None)
    return not (exc and isinstance(exc[1], httpx.TransportError))


def _watch_api(done: threading.Event, every_s: float = 1.0) -> None:
    """Until ``done``: once a temporary Prefect API this process started has exited (killed, crashed) while no stop
    is under way, end the run (`lose_api`). Its process is watched, not its answers: a busy server is not lost."""
    while not done.wait(every_s):
        try:
            lost = [(s.api_url, code) for s in _temporary_servers() if (code := s.server_process.poll()) is not None]
        except Exception:  # Prefect's objects in the middle of a change in another thread: look again
            continue
        # a Ctrl-C reaches the server with the flow: the main thread takes its signal when it next runs Python
        if lost and not done.wait(2.0) and _sup.signum is None:
            url, code = lost[0]
            lose_api(url, f"its server {f'was killed by {_signal_name(code)}' if code < 0 else f'exited with {code}'}")
            return


def lose_api(url: str, why: str) -> None:
    """The run's Prefect API is gone: say so in one line, stop the running groups (SIGTERM, the grace, SIGKILL)
    and exit 1 now, from this thread. Prefect would otherwise retry every state change and log for minutes and
    end in tracebacks. The main thread starts nothing more meanwhile (`stream` parks it); the next run resumes."""
    with _sup.lock:
        if _sup.closing or _sup.signum is not None:
            return
        _sup.closing = True
    _quiet_lost_api()
    print(f"error: the Prefect API at {url} is gone ({why}); stopping the run, the next run resumes from the last "
          "finished stage", file=sys.stderr, flush=True)  # fmt: skip
    try:
        stop_all()
    finally:
        _hard_exit(1)


def _temporary_servers() -> list:
    """The temporary Prefect APIs this process started (none unless Prefect's server module is loaded)."""
    server_cls = getattr(sys.modules.get("prefect.server.api.server"), "SubprocessASGIServer", None)
    if server_cls is None:  # not imported, or being imported in another thread
        return []
    return [s for s in list(getattr(server_cls, "_instances", {}).values()) if s.server_process]


def api_urls() -> list[str]:
    """The Prefect API(s) this process uses: the temporary one it started, else PREFECT_API_URL's."""
    urls = [s.api_url for s in _temporary_servers()]
    if not urls and "prefect.settings" in sys.modules:
        urls = [u for u in [sys.modules["prefect.settings"].get_current_settings().api.url] if u]
    return urls


def api_gone() -> bool:
    """Whether the Prefect API this process used no longer answers (one health check, 1 s at most).

    A temporary API is in the flow's process group, so the terminal's Ctrl-C stops it together with the flow.
    """
    import httpx

    for url in api_urls():
        try:
            if httpx.get(f"{url.rstrip('/')}/health", timeout=1).status_code != 200:
                return True
        except httpx.HTTPError:
            return True
    return False


def exit_process(code: int, drain_s: float = 10.0) -> None:
    """End the process with ``code`` within about ``drain_s`` seconds, whatever the Prefect API's state.

    At exit Prefect sends the logs it still holds to its API and retries while it cannot reach it; with the API
    gone (a signal reached the temporary server too, or it crashed) that wait has no useful end. Then this says so
    in one line and leaves at once; otherwise Prefect gets ``drain_s`` to finish, and a watchdog ends the wait.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if _sup.flow_ran and api_gone():
        _quiet_lost_api()
        print("warning: the Prefect API is gone; the run's last state and logs were not sent to it", file=sys.stderr)
        _hard_exit(code)

    def watchdog() -> None:
        time.sleep(drain_s)
        print(f"warning: the Prefect API did not take the run's last logs in {drain_s:g} s; exiting without them",
              file=sys.stderr)  # fmt: skip
        _hard_exit(code)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
    sys.exit(code)


def _hard_exit(code: int) -> None:
    stop_prefect_server()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
