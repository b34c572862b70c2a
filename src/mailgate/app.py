"""The only place that wires everything: store, door, SMTP relay, HTTP API, delivery.

`mailgate serve` runs one `App`. Roles choose its components; each component starts
and stops on its own (start(), stop(grace)), and the app only orders them. serve's
child processes (more ingress, delivery) are the supervisor's (supervisor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mailgate import keys
from mailgate.auth_guard import AuthGuard
from mailgate.cluster_limits import ClusterLimits, Tables
from mailgate.config import Config, usable_cpus
from mailgate.delivery.worker import Deliverer, owner_prefix
from mailgate.domains.manage import DomainAdmin, DomainChecks, policy_of
from mailgate.domains.sending import SendingDomains
from mailgate.errors import ConfigError, MailgateError, StartupError, StoreError
from mailgate.events.endpoints import WebhookAdmin
from mailgate.events.webhooks import WebhookSender
from mailgate.http.app import Api
from mailgate.http.server import HttpServer
from mailgate.ingress.accept import Door
from mailgate.ingress.smtp_relay import SmtpRelay
from mailgate.lifecycle import Lifecycle, Phase
from mailgate.mailboxes import submission
from mailgate.mailboxes.grants import GrantAdmin
from mailgate.mailboxes.models import Credentials, Grant
from mailgate.mailboxes.runner import MailboxSync
from mailgate.mailboxes.service import Mailboxes
from mailgate.metrics import Metrics
from mailgate.models import Scope
from mailgate.resolver import make_resolver
from mailgate.retention import Retention
from mailgate.secretbox import SecretBox
from mailgate.store import Store, open_store
from mailgate.store.postgres import PostgresStore
from mailgate.store.sqlite.store import SqliteStore
from mailgate.store.sqlite.writer import WriterServer, socket_path
from mailgate.supervisor import Supervisor
from mailgate.tls import server_context

log = logging.getLogger("mailgate")
DELIVERY_STOP_TIMEOUT = 30.0  # seconds for workers to finish the claims in hand
DNS_TIMEOUT = 5.0  # seconds a domain check waits for each DNS answer


class Role(enum.StrEnum):
    """What one mailgate process runs."""

    ALL = "all"  # everything (delivery in a child process when server.delivery_process)
    API = "api"  # the HTTP API only
    SMTP = "smtp"  # the SMTP relay only
    WORKER = "worker"  # delivery workers only
    INGRESS = "ingress"  # HTTP and SMTP on the ports of the `serve` process that started it
    WRITER = "writer"  # the one SQLite writer of a `serve` with children (store/sqlite/writer.py)


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


def make_store(config: Config, *, server: bool = False) -> Store:
    return open_store(
        config.store_url,
        unsafe_no_fsync=config.store.unsafe_no_fsync,
        batch_max=config.store.batch_max,
        pool_size=config.store.pool_size,
        exclusive=server,
    )


def shares_ports(config: Config, role: Role) -> bool:
    """Several processes listen on the HTTP and SMTP ports (SO_REUSEPORT)."""
    return role is Role.INGRESS or (role is Role.ALL and config.server.ingress_processes > 1)


def child_delivers(config: Config, role: Role) -> bool:
    """Delivery runs in a `serve --role worker` child of this process."""
    return role is Role.ALL and config.server.delivery_process and config.delivery.enabled


def has_children(config: Config, role: Role) -> bool:
    """This is a `serve` that starts child processes (more ingress, delivery)."""
    return role is Role.ALL and (shares_ports(config, role) or child_delivers(config, role))


def uses_writer(config: Config, role: Role, supervised: bool) -> bool:
    """This process commits through serve's SQLite writer process: serve itself when it
    has children, and the ingress and delivery children it started (`supervised`)."""
    if not (config.store.writer_process and config.store_url.startswith("sqlite:")):
        return False
    if role is Role.ALL:
        return has_children(config, role)
    return supervised and role in (Role.INGRESS, Role.WORKER)


def shared_metrics_dir(config: Config, role: Role) -> Path | None:
    """Where serve and its children keep their metric values, so that /metrics adds them
    up whichever process answers; None for a process on its own. The serving process
    empties it: counters start again with the server. serve calls this and
    process.share_metrics once, before anything makes a metric."""
    if role in (Role.INGRESS, Role.WORKER, Role.WRITER):
        inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return Path(inherited) if inherited else None
    if not has_children(config, role):
        return None
    directory = Path(config.server.data_dir) / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink()
    return directory


class Delivery:
    """The delivery loop as a component. A loop that ends on its own (a bug, not a
    recipient's fault) calls `on_death`: a process that still takes mail must not live on
    without delivering it."""

    def __init__(self, deliverer: Deliverer, on_death: Callable[[BaseException | None], None]):
        self.deliverer, self.on_death = deliverer, on_death
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.deliverer.run())
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not self.deliverer.stopping.is_set():
            self.on_death(None if task.cancelled() else task.exception())

    async def stop(self, grace: float) -> None:
        if self.task is None:
            return
        self.deliverer.stopping.set()  # workers finish the claim in hand, then stop
        done, _ = await asyncio.wait({self.task}, timeout=DELIVERY_STOP_TIMEOUT)
        if not done:  # a stuck remote: cancel; step() releases the leases it held
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=5)


def check_data_dir(cfg: Config) -> None:
    """The data directory exists (made if need be) and takes a file: said in one line
    before anything else trips over it."""
    data_dir = Path(cfg.server.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"mailgate: data directory {data_dir} is not usable: {exc.strerror or exc};"
            " set server.data_dir to a directory this user can write"
        ) from None


def cannot_listen(cfg: Config, smtp: bool, exc: OSError) -> str:
    """One line for a listener that could not start, naming the setting to change."""
    section, host, port = (
        ("smtp", cfg.smtp.host, cfg.smtp.port)
        if smtp
        else (
            "http",
            cfg.http.host,
            cfg.http.port,
        )
    )
    why = exc.strerror or str(exc)
    hint = (
        f"another program (another mailgate?) listens there: stop it or set {section}.port"
        if exc.errno == errno.EADDRINUSE
        else f"check {section}.host and {section}.port"
    )
    return f"mailgate: cannot listen on {host}:{port} ({section}): {why}; {hint}"


async def first_admin_key(store: Store, data_dir: Path) -> Path | None:
    """A store without any key (PostgreSQL named after `init` wrote its key into SQLite,
    say) gets an admin key on the first serve: a server no key can reach is of no use.
    The secret goes to a file only its owner can read (a log under systemd or Docker
    is read by many), whose path is said on stderr; the path, None when keys exist."""
    if await store.list_keys():
        return None
    key, secret = await keys.create_key(store, "admin", [Scope.ADMIN, Scope.SEND, Scope.READ])
    path = data_dir / f"admin-key-{key.id}.txt"
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    print(
        f"mailgate: the store had no API key; created admin key {key.id}: its secret is in"
        f" {path} (read it, keep it elsewhere, delete the file)",
        file=sys.stderr,
        flush=True,
    )
    return path


class App:
    """One running mailgate process."""

    def __init__(
        self,
        config: Config,
        role: Role = Role.ALL,
        config_path: Path | None = None,
        ready_fd: int | None = None,
        metrics_dir: Path | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """metrics_dir: where serve's processes share metric values (serve made this
        process use it with process.share_metrics); None: this process counts alone.
        on_ready: called once everything has started (serve: process.freeze_heap)."""
        self.on_ready = on_ready
        self.config = config
        self.role = role
        self.ready_fd = ready_fd  # a child writes one byte here once it is listening
        # /readyz says "starting" until serve's children are up as well
        self.lifecycle = Lifecycle(Phase.STARTING if role is Role.ALL else Phase.READY)
        self.supervisor = Supervisor(config_path, self._child_env, self._child_died)
        self.store: Store | None = None
        self.smtp: SmtpRelay | None = None
        self.http: HttpServer | None = None
        self.deliverer: Deliverer | None = None
        self.delivery: Delivery | None = None
        self.writer: WriterServer | None = None  # role writer: the socket it answers on
        self.background: list[Component] = []  # sending domains' reloads, domain checks
        self.failure: MailgateError | None = None  # why the process stopped on its own
        self.metrics = Metrics.create(metrics_dir)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def wants(self, role: Role) -> bool:
        if role is Role.WORKER and self.child_delivers:
            return False
        if self.role is Role.INGRESS:
            return role in (Role.API, Role.SMTP)
        return self.role in (Role.ALL, role)

    @property
    def supervised(self) -> bool:
        """A child that serve started (it says when it is up on the ready pipe)."""
        return self.ready_fd is not None

    @property
    def shares_ports(self) -> bool:
        return shares_ports(self.config, self.role)

    @property
    def child_delivers(self) -> bool:
        return child_delivers(self.config, self.role)

    def _components(self, store: Store) -> list[Component]:
        """This process's components, in the order they start."""
        cfg = self.config
        # limits held for the whole server, not per process: its processes share these
        limits = Path(cfg.server.data_dir) / "shared"
        guard = AuthGuard(
            cfg.auth.failures_per_ip,
            cfg.auth.failures_per_key,
            cfg.auth.failure_window,
            first_delay=cfg.auth.first_failure_delay,
            directory=limits,
        )
        if self.role is Role.WRITER:
            assert isinstance(store, SqliteStore), "the writer process is SQLite's"
            self.writer = WriterServer(store.engine, socket_path(store.path))
            return [self.writer]
        if not cfg.server.secret_key and not cfg.store_url.startswith("sqlite"):
            log.warning(
                "server.secret_key is not set: DKIM keys are sealed with %s, which every"
                " other node needs too (set the same server.secret_key on each)",
                cfg.data_dir.resolve() / "secret.key",
            )
        box = SecretBox.open(cfg.server.secret_key, cfg.data_dir)
        sending = SendingDomains(store, box, cfg.domains.refresh_seconds, time.time)
        # one door for every way in: the same rules, settings, hooks and count
        door = Door(
            store,
            cfg.server.hostname,
            cfg.accept.max_recipients,
            self.metrics.count_accepted,
            timed=self.metrics.time_commit_wait,
            signers=[sending.sign],
            require_sending=sending.is_sending if cfg.domains.require_verified else None,
        )
        hooks = WebhookAdmin(
            store, box, cfg.webhooks, make_resolver(cfg.delivery.resolver, DNS_TIMEOUT)
        )
        admin = DomainAdmin(
            store,
            box,
            policy_of(cfg),
            make_resolver(cfg.delivery.resolver, DNS_TIMEOUT),
            (cfg.domains.check_interval, cfg.domains.pending_check_interval),
            on_change=sending.refresh,
        )
        # connected mailboxes: one Mailboxes a process (the API reads through it, delivery
        # files Sent copies with it); grants checked on both servers before they are kept
        mailboxes = Mailboxes(store, box, cfg.mailboxes)
        ehlo = cfg.delivery.ehlo_hostname or cfg.server.hostname

        async def smtp_check(grant: Grant, creds: Credentials) -> str | None:
            return await submission.check(grant, creds, cfg.delivery, cfg.mailboxes, ehlo)

        grants = GrantAdmin(store, box, smtp_check, mailboxes.check)
        self.background = [sending]  # loaded before the doors open, stopped last
        out: list[Component] = [sending]
        if self.wants(Role.SMTP) and cfg.smtp.enabled:
            self.smtp = SmtpRelay(
                cfg.smtp,
                store,
                cfg.server.hostname,
                door,
                tls_context=server_context(cfg),
                guard=guard,
                lifecycle=self.lifecycle,
                reuse_port=self.shares_ports,
                shared=limits,
            )
            out.append(self.smtp)
        if self.wants(Role.API) and cfg.http.enabled:
            api = Api(
                store,
                cfg.http,
                cfg.server.hostname,
                self.metrics,
                self.lifecycle,
                guard,
                door,
                admin,
                hooks,
                limits,
                capture=cfg.delivery.mode == "capture",
                grants=grants,
                mailboxes=mailboxes,
            )
            tls = (cfg.smtp.tls_cert, cfg.smtp.tls_key) if cfg.http.tls else None
            if tls is not None and not all(tls):
                raise ConfigError("config: http.tls needs smtp.tls_cert and smtp.tls_key")
            self.http = HttpServer(api, cfg.http, reuse_port=self.shares_ports, tls=tls)
            out.append(self.http)
        if isinstance(store, PostgresStore) and (self.smtp or self.http):
            tables = Tables(events=guard.tables())  # shared with the other nodes
            if self.http is not None and self.http.api.auth.rate.buckets is not None:
                tables.buckets["http-rate"] = self.http.api.auth.rate.buckets
            if self.smtp is not None:
                tables.counts["smtp-connections"] = self.smtp.connections
            out.append(ClusterLimits(store, limits, tables))
        if self.wants(Role.WORKER) and cfg.delivery.enabled:
            own = set()  # never deliver to ourselves (a loop)
            if cfg.smtp.enabled and cfg.smtp.port:
                own.add((cfg.smtp.host, cfg.smtp.port))
            # serve's delivery children share the configured caps; one delivering
            # process (or a worker started on its own) has them whole
            shared = self.role is Role.WORKER and self.supervised
            self.deliverer = Deliverer(
                store,
                cfg.delivery_share() if shared else cfg.delivery,
                cfg.server.hostname,
                door,
                own_endpoints=own,
                lease_seconds=cfg.store.lease_seconds,
                mailboxes=submission.GrantRoutes(
                    store, box, cfg.delivery, cfg.mailboxes, ehlo, mailboxes
                ),
            )
            self.delivery = Delivery(self.deliverer, self._delivery_died)
            out.append(self.delivery)
        if self.wants(Role.WORKER):  # where delivery runs, or would (it may be off)
            checks = DomainChecks(admin)  # re-checks the domains' DNS
            sender = WebhookSender(store, hooks, cfg.webhooks)  # sends webhooks
            purge = Retention(store, cfg.retention)  # purges what is kept no longer
            self.background += [checks, sender, purge]
            out += [checks, sender, purge]
            if cfg.mailboxes.enabled:  # syncs every valid grant's mailbox over IMAP
                reader = MailboxSync(mailboxes)
                self.background.append(reader)
                out.append(reader)
        return out

    async def start(self) -> None:
        cfg = self.config
        # The serving process holds the SQLite server lock; its children (delivery,
        # more ingress) share the file beside it.
        children_roles = (Role.WORKER, Role.INGRESS, Role.WRITER)
        self.store = make_store(cfg, server=self.role not in children_roles)
        await self.store.open()
        store = self.store
        if isinstance(store, SqliteStore):  # the commit's stages, for /metrics
            store.engine.on_group = self.metrics.time_group
            store.engine.on_sync = self.metrics.time_sync
        elif isinstance(store, PostgresStore):
            store.on_group = self.metrics.time_group
        if self.role is Role.ALL:
            await first_admin_key(store, Path(cfg.server.data_dir))
        via_writer = uses_writer(cfg, self.role, self.supervised)
        if via_writer and self.role is not Role.ALL:
            assert isinstance(store, SqliteStore)
            store.use_writer(socket_path(store.path))
        for component in self._components(self.store):
            try:
                await component.start()
            except OSError as exc:  # a port taken, an address not on this machine
                if component is not self.smtp and component is not self.http:
                    raise StartupError(f"mailgate: cannot start: {exc}") from None
                raise StartupError(cannot_listen(cfg, component is self.smtp, exc)) from None
            if component is self.smtp and self.deliverer is not None:
                self.deliverer.own_endpoints.add((cfg.smtp.host, self.smtp.port))
        if self.smtp is not None:
            log.info("smtp relay listening on %s:%s", cfg.smtp.host, self.smtp.port)
        if self.http is not None:
            log.info("http api listening on %s:%s", cfg.http.host, self.http_port)
        if via_writer and self.role is Role.ALL:  # the writer first: the others commit through it
            assert isinstance(store, SqliteStore)
            await self.supervisor.start([Role.WRITER.value])
            store.use_writer(socket_path(store.path))
        if self.role is Role.ALL and not has_children(cfg, self.role) and usable_cpus() == 1:
            log.info(
                "one CPU usable: this one process takes mail in and delivers it"
                " (server.ingress_processes and server.delivery_process change that)"
            )
        children = [Role.WORKER] * cfg.server.delivery_processes if self.child_delivers else []
        if self.role is Role.ALL and self.shares_ports:
            children += [Role.INGRESS] * (cfg.server.ingress_processes - 1)
        if children:
            await self.supervisor.start([role.value for role in children])
        self.lifecycle.mark_ready()
        self.ready.set()

    def _delivery_died(self, error: BaseException | None) -> None:
        """Stop this process so that run() fails and it is started again (by serve's
        supervisor for a delivery child, by systemd or the container runtime otherwise)."""
        log.error("delivery stopped unexpectedly; stopping so that it is restarted", exc_info=error)
        self.failure = MailgateError(f"delivery stopped: {error!r}")
        self.stopping.set()

    def _child_env(self) -> dict[str, str]:
        """The children listen on the ports this process got (config may say 0) and open
        the database it opened (a config made in code, as tests make them, reaches a
        child only through these)."""
        env = dict(os.environ)
        env["MAILGATE_SERVER_DATA_DIR"] = str(self.config.server.data_dir)
        env["MAILGATE_STORE_URL"] = self.config.store_url
        if self.http is not None:
            env["MAILGATE_HTTP_PORT"] = str(self.http_port)
        if self.smtp is not None:
            env["MAILGATE_SMTP_PORT"] = str(self.smtp.port)
        return env

    async def _child_died(self, role: str, pid: int) -> None:
        """A dead delivery child's leased recipients are handed back at once."""
        if role == Role.WORKER and self.store is not None:
            await self.store.recover_leases(owner_prefix(pid), time.time())

    @property
    def http_port(self) -> int:
        assert self.http is not None
        return self.http.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish or release work in flight, close the store.

        New HTTP requests get 503 and new SMTP sessions and transactions 421 4.3.2 while
        the requests and transactions in flight finish (up to `grace` seconds); then
        delivery finishes the claims in hand."""
        self.lifecycle.drain()
        ingress: list[Component] = [c for c in (self.http, self.smtp) if c is not None]
        await asyncio.gather(
            self.supervisor.stop(Role.INGRESS.value),  # they drain the same way
            *(c.stop(grace) for c in ingress),
        )
        await self.supervisor.stop(Role.WORKER.value)
        if self.delivery is not None:
            await self.delivery.stop(grace)
        for component in self.background:  # before the writer: a check may be writing
            await component.stop(grace)
        await self.supervisor.stop(Role.WRITER.value)  # last: the others commit through it
        if self.writer is not None:
            await self.writer.stop(grace)
        if self.store is not None:
            await self.store.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        try:
            try:
                await self.start()
            except StoreError as exc:  # unreachable, locked, newer schema: one line, exit 2
                raise StartupError(str(exc)) from None
            if self.on_ready is not None:
                self.on_ready()
            if self.ready_fd is not None:
                os.write(self.ready_fd, b"1")
                os.close(self.ready_fd)
            await self.stopping.wait()
            log.info("stopping")
        finally:
            await self.stop()
        if self.failure is not None:
            raise self.failure  # a non-zero exit: whoever started us starts us again
