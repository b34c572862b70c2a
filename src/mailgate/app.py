"""The only place that wires everything: store, SMTP relay, HTTP API, workers.

`mailgate serve` runs one `App`; each component is an asyncio task. Roles choose the
components, so several processes or machines can share one PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import enum
import logging
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import uvicorn

from mailgate.auth_guard import AuthGuard
from mailgate.config import Config
from mailgate.delivery.worker import Deliverer, owner_prefix
from mailgate.errors import ConfigError, MailgateError
from mailgate.http.app import Api, create_api
from mailgate.ingress.accept import Door
from mailgate.ingress.smtp_relay import SmtpRelay
from mailgate.lifecycle import Lifecycle, Phase
from mailgate.metrics import Metrics
from mailgate.models import Source
from mailgate.process import share_metrics
from mailgate.store import Store, open_store

log = logging.getLogger("mailgate")


class Role(enum.StrEnum):
    """What one mailgate process runs."""

    ALL = "all"  # everything (delivery in a child process when server.delivery_process)
    API = "api"  # the HTTP API only
    SMTP = "smtp"  # the SMTP relay only
    WORKER = "worker"  # delivery workers only
    INGRESS = "ingress"  # HTTP and SMTP on the ports of the `serve` process that started it


def make_store(config: Config, *, server: bool = False) -> Store:
    return open_store(
        config.store_url,
        unsafe_no_fsync=config.store.unsafe_no_fsync,
        batch_max=config.store.batch_max,
        pool_size=config.store.pool_size,
        exclusive=server,
    )


def tls_context(config: Config) -> ssl.SSLContext | None:
    cert, key = config.smtp.tls_cert, config.smtp.tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("config: smtp.tls_cert and smtp.tls_key must be set together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: smtp.tls_cert / smtp.tls_key: cannot load: {exc}") from None
    return ctx


def write_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for development (`mailgate init`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _die_with_parent() -> None:
    """In the delivery child, before exec: die with the serving process (Linux). A
    leftover child would keep delivering what the restarted server takes back."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _terminate(proc: asyncio.subprocess.Process, role: Role) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 45)
    except TimeoutError:
        log.error("%s process %s did not stop; killing it", role, proc.pid)
        proc.kill()
        await proc.wait()


class App:
    """One running mailgate process."""

    def __init__(
        self,
        config: Config,
        role: Role = Role.ALL,
        config_path: Path | None = None,
        ready_fd: int | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.ready_fd = ready_fd  # a child writes one byte here once it is listening
        self.config_path = config_path  # handed to the children
        self.children: dict[int, tuple[Role, asyncio.subprocess.Process]] = {}
        self._supervisors: dict[Role, list[asyncio.Task[None]]] = {}
        self.store: Store | None = None
        self.smtp: SmtpRelay | None = None
        self.http: uvicorn.Server | None = None
        self.api: Api | None = None
        self.deliverer: Deliverer | None = None
        self._delivery: asyncio.Task[None] | None = None
        self.failure: MailgateError | None = None  # why the process stopped on its own
        shared_metrics = self._shared_metrics_dir()
        if shared_metrics is not None:
            share_metrics(shared_metrics)
        self.metrics = Metrics.create(shared_metrics)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def _shared_metrics_dir(self) -> Path | None:
        """Where serve and its children keep their metric values, so that /metrics adds
        them up whichever process answers; None for a process on its own. The serving
        process empties it: counters start again with the server."""
        if self.role in (Role.INGRESS, Role.WORKER):
            inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            return Path(inherited) if inherited else None
        if self.role is not Role.ALL or not (self.shares_ports or self.child_delivers):
            return None
        directory = Path(self.config.server.data_dir) / "metrics"
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.db"):
            old.unlink()
        return directory

    def wants(self, role: Role) -> bool:
        if role is Role.WORKER and self.child_delivers:
            return False
        if self.role is Role.INGRESS:
            return role in (Role.API, Role.SMTP)
        return self.role in (Role.ALL, role)

    @property
    def shares_ports(self) -> bool:
        """Several processes listen on the HTTP and SMTP ports (SO_REUSEPORT)."""
        return self.role is Role.INGRESS or (
            self.role is Role.ALL and self.config.server.ingress_processes > 1
        )

    @property
    def child_delivers(self) -> bool:
        """Delivery runs in a `serve --role worker` child of this process."""
        cfg = self.config
        return self.role is Role.ALL and cfg.server.delivery_process and cfg.delivery.enabled

    async def start(self) -> None:
        cfg = self.config
        ctx = tls_context(cfg)
        # The serving process holds the SQLite server lock; its children (delivery,
        # more ingress) share the file beside it.
        self.store = make_store(cfg, server=self.role not in (Role.WORKER, Role.INGRESS))
        guard = AuthGuard(
            cfg.auth.failures_per_ip,
            cfg.auth.failures_per_key,
            cfg.auth.failure_window,
            first_delay=cfg.auth.first_failure_delay,
        )
        await self.store.open()
        metrics = self.metrics

        def count(source: Source, n: int) -> None:
            metrics.accepted.labels(source).inc(n)

        # one door for every way in: the same rules, settings, hooks and count
        door = Door(self.store, cfg.server.hostname, cfg.accept.max_recipients, count=count)
        if self.wants(Role.SMTP) and cfg.smtp.enabled:
            self.smtp = SmtpRelay(cfg.smtp, self.store, cfg.server.hostname, ctx, guard, door=door)
            await self.smtp.start(reuse_port=self.shares_ports)
            log.info("smtp relay listening on %s:%s", cfg.smtp.host, self.smtp.port)
        if self.wants(Role.API) and cfg.http.enabled:
            # /readyz says starting until its children are up
            phase = Phase.STARTING if self.role is Role.ALL else Phase.READY
            api = Api(
                self.store,
                cfg.http,
                cfg.server.hostname,
                self.metrics,
                Lifecycle(phase),
                guard,
                door,
            )
            self.api = api
            server_config = uvicorn.Config(
                create_api(api),
                host=cfg.http.host,
                port=cfg.http.port,
                lifespan="off",
                http="httptools",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=10,
            )
            self.http = uvicorn.Server(server_config)
            server_config.load()
            self.http.lifespan = server_config.lifespan_class(server_config)
            try:
                sock = socket.create_server(
                    (cfg.http.host, cfg.http.port),
                    family=socket.AF_INET6 if ":" in cfg.http.host else socket.AF_INET,
                    backlog=2048,
                    reuse_port=self.shares_ports,
                )
                await self.http.startup(sockets=[sock])
            except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot serve
                self.http = None
                raise ConfigError(
                    f"config: http.port: cannot listen on {cfg.http.host}:{cfg.http.port}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
            self._http_ticks = asyncio.create_task(self.http.main_loop())
            log.info("http api listening on %s:%s", cfg.http.host, self.http_port)
        if self.wants(Role.WORKER) and cfg.delivery.enabled:
            own = set()
            if self.smtp is not None:
                own.add((cfg.smtp.host, self.smtp.port))
            elif cfg.smtp.enabled and cfg.smtp.port:
                own.add((cfg.smtp.host, cfg.smtp.port))  # the relay in another process
            self.deliverer = Deliverer(
                self.store,
                cfg.delivery,
                cfg.server.hostname,
                own_endpoints=own,
                lease_seconds=cfg.store.lease_seconds,
                door=door,
            )
            self._delivery = asyncio.create_task(self.deliverer.run())
            self._delivery.add_done_callback(self._delivery_ended)
        roles = [Role.WORKER] if self.child_delivers else []
        if self.role is Role.ALL and self.shares_ports:
            roles += [Role.INGRESS] * (cfg.server.ingress_processes - 1)
        if roles:
            await self._start_children(roles)
        if self.api is not None:
            self.api.lifecycle.mark_ready()
        self.ready.set()

    def _delivery_ended(self, task: asyncio.Task[None]) -> None:
        """Delivery must not die quietly under a process that still takes mail: stop
        this process so that run() fails and it is started again (by serve's supervisor
        for a delivery child, by systemd or the container runtime otherwise)."""
        assert self.deliverer is not None
        if self.deliverer.stopping.is_set():
            return  # told to stop
        error = None if task.cancelled() else task.exception()
        log.error("delivery stopped unexpectedly; stopping so that it is restarted", exc_info=error)
        self.failure = MailgateError(f"delivery stopped: {error!r}")
        self.stopping.set()

    async def _start_children(self, roles: list[Role]) -> None:
        """Start them and wait until each says it is up: until then /readyz says 503, as
        a client that connected earlier would stay on this process alone."""
        started = [asyncio.Event() for _ in roles]
        for role, event in zip(roles, started, strict=True):
            supervisor = asyncio.create_task(self._supervise(role, event))
            self._supervisors.setdefault(role, []).append(supervisor)
        waits = [asyncio.create_task(event.wait()) for event in started]
        _, late = await asyncio.wait(waits, timeout=60)
        for wait in late:
            wait.cancel()
        if late:
            log.error("%d child processes did not start", len(late))

    def _child_env(self) -> dict[str, str]:
        """The children listen on the ports this process got (config may say 0)."""
        env = dict(os.environ)
        if self.http is not None:
            env["MAILGATE_HTTP_PORT"] = str(self.http_port)
        if self.smtp is not None:
            env["MAILGATE_SMTP_PORT"] = str(self.smtp.port)
        return env

    async def _supervise(self, role: Role, started: asyncio.Event) -> None:
        """Run `mailgate serve --role <role>` beside this process and start another when
        it dies; a dead delivery process's leased recipients are handed back first.
        `started` is set once the child says it is up."""
        assert self.store is not None
        while not self.stopping.is_set():
            config = ["--config", str(self.config_path)] if self.config_path else []
            read_end, write_end = os.pipe()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "mailgate", "serve", "--role", role.value, *config),
                    "--ready-fd",
                    str(write_end),
                    env=self._child_env(),
                    pass_fds=(write_end,),
                    preexec_fn=_die_with_parent,
                )
            finally:
                os.close(write_end)
            self.children[proc.pid] = (role, proc)
            # b"" when the child died first: the loop below starts another
            said = await asyncio.to_thread(os.read, read_end, 1)
            os.close(read_end)
            if said:
                started.set()
            code = await proc.wait()
            if self.stopping.is_set():
                return
            del self.children[proc.pid]
            log.error("%s process %s exited with %s; starting another", role, proc.pid, code)
            if role is Role.WORKER:
                await self.store.recover_leases(owner_prefix(proc.pid), time.time())
            await asyncio.sleep(1)

    @property
    def http_port(self) -> int:
        assert self.http is not None
        return int(self.http.servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish or release work in flight, close the store.

        New HTTP requests get 503 and new SMTP sessions and transactions 421 4.3.2 while
        the requests and transactions in flight finish (up to `grace` seconds)."""
        stops = [self._stop_children(Role.INGRESS)]  # they drain the same way
        if self.http is not None:
            stops.append(self._stop_http(grace))
        if self.smtp is not None:
            stops.append(self.smtp.stop(grace))
        await asyncio.gather(*stops)
        await self._stop_children(Role.WORKER)
        if self.deliverer is not None and self._delivery is not None:
            self.deliverer.stopping.set()  # workers finish the claim in hand, then stop
            done, _ = await asyncio.wait({self._delivery}, timeout=30)
            if not done:  # a stuck remote: cancel; step() releases the leases it held
                self._delivery.cancel()
                await asyncio.wait({self._delivery}, timeout=5)
        if self.store is not None:
            await self.store.close()

    async def _stop_children(self, role: Role) -> None:
        """SIGTERM the children of one role: ingress ones drain their requests and
        sessions, a delivery one finishes or releases its claims."""
        procs = [proc for r, proc in self.children.values() if r is role]
        await asyncio.gather(*(_terminate(proc, role) for proc in procs))
        supervisors = self._supervisors.get(role, [])
        if supervisors:
            await asyncio.wait(supervisors, timeout=5)

    async def _stop_http(self, grace: float) -> None:
        assert self.http is not None and self.api is not None
        self.api.lifecycle.drain()
        deadline = asyncio.get_running_loop().time() + grace
        while any(not t.done() for t in self.http.server_state.tasks):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        self.http.should_exit = True
        await self._http_ticks
        await self.http.shutdown()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.start()
            if self.ready_fd is not None:
                os.write(self.ready_fd, b"1")
                os.close(self.ready_fd)
            await self.stopping.wait()
            log.info("stopping")
        finally:
            await self.stop()
        if self.failure is not None:
            raise self.failure  # a non-zero exit: whoever started us starts us again
