"""The one typed configuration schema.

A TOML file (sections below) plus `MAILGATE_<SECTION>_<KEY>` environment overrides,
validated at start-up. Unknown keys and bad values raise ConfigError with one line
naming the key and what was expected. docs/config.md is generated from this file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailgate.errors import ConfigError

log = logging.getLogger("mailgate.config")
ENV_PREFIX = "MAILGATE_"
MAX_RECIPIENTS = 1000  # Postfix's smtpd_recipient_limit default, and HTTP's before 0.2
CONFIG_ENV = "MAILGATE_CONFIG"  # names the TOML file; not a setting itself


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fernet_key(value: str) -> str:
    if value:
        try:
            ok = len(base64.urlsafe_b64decode(value.encode())) == 32
        except (ValueError, binascii.Error):
            ok = False
        if not ok:
            raise ValueError(
                "expected 32 url-safe base64 bytes (make one with: python -c 'from"
                " cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            )
    return value


CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroups: Path = CGROUP_ROOT, own: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process can use: those it may run on (taskset, a container's
    cpuset), fewer when a cgroup quota on its way to the root allows less (a container's
    --cpus, systemd's CPUQuota; rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cgroups, own)
    return cpus if quota is None else min(cpus, max(1, math.ceil(quota)))


def cgroup_quota(cgroups: Path, own: Path) -> float | None:
    """The smallest CPU quota (in CPUs) of this process's cgroup and its parents, v2
    (`cpu.max`) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`); None: no limit."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    places: list[tuple[Path, Path]] = []  # (the hierarchy's root, this process's cgroup in it)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2, the unified hierarchy
            places.append((cgroups, cgroups / path.lstrip("/")))
        elif "cpu" in controllers.split(","):
            base = cgroups / controllers
            places.append((base, base / path.lstrip("/")))
    if not places:
        places = [(cgroups, cgroups)]
    found: list[float] = []
    for top, at in places:
        while True:
            limit = _quota_at(at)
            if limit is not None:
                found.append(limit)
            if at == top or top not in at.parents:
                break
            at = at.parent
    return min(found, default=None)


def _quota_at(directory: Path) -> float | None:
    try:
        try:  # v2
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        except FileNotFoundError:  # v1
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0 or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):  # no limit here, or a file we cannot read
        return None


def _one_cpu_layout(data: Any) -> Any:
    """On one CPU, one process takes mail in and delivers it, unless set otherwise: the
    children cost more than they give there (2 KB mail 35-93% faster in, 36-74% while
    delivering: docs/benchmarks.md, "One CPU"). Setting delivery_processes asks for
    delivery children."""
    if isinstance(data, dict) and usable_cpus() == 1:
        layout = {"ingress_processes": 1}
        if "delivery_processes" not in data:
            layout["delivery_process"] = False
        return {**layout, **data}
    return data


class ServerConfig(_Section):
    hostname: str = Field(
        "localhost", description="Name used in the SMTP greeting, Received and Message-ID."
    )
    data_dir: str = Field("./data", description="Directory for the SQLite database and TLS files.")
    secret_key: str = Field(
        "",
        description="Key that encrypts secrets kept in the store (DKIM private keys):"
        " Fernet, 32 url-safe base64 bytes. Empty: a key file `secret.key` made in data_dir"
        " (mode 0600). Every node on PostgreSQL needs the same one.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Logging threshold."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: a line a record; json: one JSON object a line (time, level,"
        " logger, message, and message_id on every line about one message).",
    )
    _secret_key = field_validator("secret_key")(_fernet_key)

    delivery_process: bool = Field(
        True,
        description="`serve` runs delivery in a child process of its own, so taking mail in"
        " and sending it out use separate cores; off: one process does everything."
        " Unset on a machine (or container) with one CPU: off.",
    )
    delivery_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Delivery child processes when delivery_process is on; they share the"
        " queue through leases, as workers on several nodes do, and split the per-domain and"
        " per-host connection caps and the domain rate between them.",
    )
    ingress_processes: int = Field(
        2,
        ge=1,
        le=64,
        description="Processes taking mail in over HTTP and SMTP: `serve` starts all but one"
        " as children sharing its ports (SO_REUSEPORT) and its store, since one Python"
        " process uses one core. 1: everything in the serving process. Unset on a machine"
        " (or container) with one CPU: 1.",
    )

    _layout = model_validator(mode="before")(_one_cpu_layout)


class StoreConfig(_Section):
    url: str = Field(
        "",
        description="Empty: SQLite at <data_dir>/mailgate.db. Or sqlite:///path or postgresql://…",
    )
    writer_process: bool = Field(
        True,
        description="SQLite: when `serve` runs child processes, one more child makes every"
        " commit for all of them (store/sqlite/writer.py) instead of each process taking"
        " the write turn in turn: 12-13% faster end to end; taking mail in alone, about 3%"
        " slower at 2 KB and 10% at 100 KB (docs/benchmarks.md).",
    )
    unsafe_no_fsync: bool = Field(
        False,
        description="Let SQLite acknowledge before the commit is on disk. Loses mail on power "
        "failure; for throwaway test setups only.",
    )
    batch_max: int = Field(
        1000, ge=1, le=100_000, description="Most writes folded into one group commit."
    )
    lease_seconds: float = Field(
        900.0,
        gt=0,
        description="How long a worker's claim lasts before another may take it (keep it"
        " above the slowest delivery of one claim).",
    )
    pool_size: int = Field(8, ge=1, le=200, description="PostgreSQL connections per process.")


def _check_networks(value: list[str]) -> list[str]:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IP network: {net!r}") from exc
    return value


class SmtpConfig(_Section):
    enabled: bool = Field(True, description="Run the SMTP relay listener.")
    host: str = Field("127.0.0.1", description="Address the SMTP listener binds.")
    port: int = Field(2525, ge=0, le=65535, description="SMTP port (STARTTLS offered).")
    tls_port: int = Field(
        0, ge=0, le=65535, description="Implicit-TLS (SMTPS) port; 0 turns it off."
    )
    tls_cert: str = Field("", description="PEM certificate chain for STARTTLS / SMTPS.")
    tls_key: str = Field("", description="PEM private key for STARTTLS / SMTPS.")
    trusted_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Clients in these networks may relay without AUTH.",
    )
    allow_plaintext_auth: bool = Field(
        False, description="Offer AUTH without TLS to non-loopback clients (unsafe)."
    )
    max_message_size: int = Field(
        26_214_400, ge=1024, description="Largest message in bytes (advertised as SIZE)."
    )
    max_recipients: int = Field(
        MAX_RECIPIENTS,
        ge=1,
        description="Deprecated alias of [accept] max_recipients (set that instead); kept in"
        " step with it.",
    )
    max_command_length: int = Field(
        2048, ge=512, description="Longest command line in bytes, CRLF included."
    )
    max_connections: int = Field(1000, ge=1, description="Concurrent connections in total.")
    max_connections_per_ip: int = Field(
        100, ge=1, description="Concurrent connections from one address."
    )
    idle_timeout: float = Field(300.0, gt=0, description="Seconds to wait for a client command.")
    session_timeout: float = Field(1800.0, gt=0, description="Longest whole session in seconds.")
    max_auth_failures: int = Field(
        3, ge=1, description="Failed AUTH attempts per connection before 421."
    )
    max_unknown_commands: int = Field(
        10, ge=1, description="Unknown or bad commands before the connection is closed."
    )
    dedupe_window: float = Field(
        86_400.0,
        ge=0,
        description="Seconds within which an identical re-send (same key, sender, recipients "
        "and bytes, with a Message-ID) is answered with the first id instead of queued "
        "again; 0 turns it off.",
    )

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class AuthConfig(_Section):
    failures_per_ip: int = Field(
        10,
        ge=1,
        description="Failed authentications (SMTP AUTH or HTTP key) from one address within"
        " failure_window before that address is refused (421 / 429).",
    )
    failures_per_key: int = Field(
        10,
        ge=1,
        description="Failed authentications naming one key within failure_window before the"
        " key is locked (answered like a wrong key).",
    )
    failure_window: float = Field(600.0, gt=0, description="Seconds failures are remembered.")
    first_failure_delay: float = Field(
        0.25,
        ge=0,
        le=10,
        description="Seconds the first failed authentication from an address waits before"
        " its answer; each later one waits twice as long as the one before, up to 16 times"
        " this.",
    )


class HttpConfig(_Section):
    enabled: bool = Field(True, description="Run the HTTP API.")
    host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    port: int = Field(8025, ge=0, le=65535, description="HTTP API port.")
    max_body_bytes: int = Field(
        40 * 1024 * 1024, ge=1024, description="Largest request body in bytes (413 beyond)."
    )
    max_recipients: int = Field(
        MAX_RECIPIENTS,
        ge=1,
        description="Deprecated alias of [accept] max_recipients (set that instead); kept in"
        " step with it.",
    )
    batch_max: int = Field(500, ge=1, le=10_000, description="Messages per batch request.")
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Requests per second per API key (429 beyond); 0 turns it off."
    )
    rate_limit_burst: int = Field(100, ge=1, description="Burst size of the per-key rate limit.")
    tls: bool = Field(
        False,
        description="Serve HTTPS on http.port with the SMTP certificate (smtp.tls_cert and"
        " smtp.tls_key); or leave it off behind a reverse proxy that terminates TLS.",
    )
    plain_keys_from: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Networks whose clients may send an API key over plain HTTP (a reverse"
        " proxy on this machine, local tools); any other client must use HTTPS (403).",
    )

    @field_validator("plain_keys_from")
    @classmethod
    def _plain_networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class AcceptConfig(_Section):
    max_recipients: int = Field(
        MAX_RECIPIENTS,
        ge=1,
        description="Envelope recipients per message, whichever way it comes in (SMTP: 452"
        " 4.5.3 to each RCPT past it; HTTP: 422 naming `to`).",
    )


def _one_recipient_cap(data: Any) -> Any:
    """[accept] max_recipients is the one cap. The old smtp.max_recipients and
    http.max_recipients still work alone or agreeing (with a warning); set to different
    values they cannot both hold, so start-up stops and says what to write instead."""
    if not isinstance(data, dict):
        return data
    sections = {name: data.get(name) for name in ("accept", "smtp", "http")}
    if not all(v is None or isinstance(v, dict) for v in sections.values()):
        return data  # the section type error is reported by validation

    def number(value: Any) -> Any:  # environment values come as text
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    new = number((sections["accept"] or {}).get("max_recipients"))
    old = {
        f"{name}.max_recipients": number(sections[name]["max_recipients"])  # type: ignore[index]
        for name in ("smtp", "http")
        if "max_recipients" in (sections[name] or {})
    }
    values = set(old.values()) | ({new} if new is not None else set())
    if len(values) > 1:
        given = ", ".join(f"{k} = {v!r}" for k, v in old.items())
        if new is not None:
            given += f", accept.max_recipients = {new!r}"
        raise ValueError(
            f"{given}: recipients are now capped by one setting, [accept] max_recipients;"
            " set it alone"
        )
    if old:
        log.warning("config: %s is deprecated; use [accept] max_recipients", " and ".join(old))
    cap = values.pop() if values else MAX_RECIPIENTS
    out = dict(data)
    for name in ("accept", "smtp", "http"):
        out[name] = {**(sections[name] or {}), "max_recipients": cap}
    return out


class DeliveryConfig(_Section):
    enabled: bool = Field(True, description="Run delivery workers.")
    mode: Literal["deliver", "capture"] = Field(
        "deliver",
        description="deliver: send mail out. capture: keep every message instead, marked"
        " delivered and readable through the API (GET /v1/messages/{id}/raw and /parsed);"
        " nothing is sent.",
    )
    ehlo_hostname: str = Field("", description="Name sent in EHLO; empty: server.hostname.")
    concurrency: int = Field(20, ge=1, le=1000, description="Claims delivered at the same time.")
    claim_batch: int = Field(100, ge=1, le=10_000, description="Recipients per claim.")
    port: int = Field(25, ge=1, le=65535, description="Destination SMTP port.")
    resolver: str = Field(
        "", description="DNS server as host or host:port; empty: the system resolver."
    )
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="Destination networks allowed despite being loopback, private, link-local "
        "or unspecified (for example 127.0.0.0/8 in tests).",
    )
    tls: Literal["opportunistic", "required", "none"] = Field(
        "opportunistic", description="STARTTLS to destinations: when offered, always, or never."
    )
    verify_certificates: bool = Field(
        False, description="Verify destination certificates (opportunistic TLS usually does not)."
    )
    tls_ca_file: str = Field("", description="Extra CA bundle for verifying destinations.")
    connect_timeout: float = Field(30.0, gt=0, description="Seconds to connect and get 220.")
    command_timeout: float = Field(
        300.0, gt=0, description="Seconds per command (RFC 5321 4.5.3.2: 5 minutes)."
    )
    data_timeout: float = Field(
        600.0, gt=0, description="Seconds for the reply after the final dot (10 minutes)."
    )
    retry_first: float = Field(300.0, gt=0, description="First retry delay in seconds.")
    retry_max: float = Field(4000.0, gt=0, description="Longest retry delay in seconds.")
    retry_jitter: float = Field(0.2, ge=0, le=1, description="Random spread of each delay (share).")
    lifetime: float = Field(
        432_000.0, gt=0, description="Seconds a recipient may stay deferred before it expires."
    )
    max_connections_per_domain: int = Field(
        10, ge=1, description="Simultaneous connections to one destination domain."
    )
    max_connections_per_host: int = Field(
        20, ge=1, description="Simultaneous connections to one destination host (IP)."
    )
    domain_rate: float = Field(
        0.0, ge=0, description="Messages per second to one domain (traffic shaping); 0: no limit."
    )
    dsn_for_api: bool = Field(
        False, description="Also send bounce messages (DSNs) for mail that came in over HTTP."
    )
    smarthost: str = Field("", description="host:port to relay all mail through; empty: MX.")
    smarthost_tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="How to secure the smarthost connection."
    )
    smarthost_username: str = Field("", description="AUTH user for the smarthost (over TLS only).")
    smarthost_password: str = Field("", description="AUTH password for the smarthost.")

    @field_validator("allow_private_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class DomainsConfig(_Section):
    require_verified: bool = Field(
        False,
        description="Refuse mail whose From: domain is not a sending domain (one whose DKIM"
        " records are verified), or a subdomain of one: HTTP 403 domain_not_verified, SMTP"
        " 550 5.7.1. Off by default so a new server relays at once; mail From a sending"
        " domain is signed either way. Turn it on once your domains are verified.",
    )
    spf_ip: list[str] = Field(
        default_factory=list,
        description="Addresses mail leaves from, for the SPF record each domain is told to"
        " publish (ip4:/ip6:); empty with no spf_include: `a:<server.hostname>`.",
    )
    spf_include: str = Field(
        "", description="A domain whose SPF record the published SPF includes (a smarthost's)."
    )
    dmarc_report_address: str = Field(
        "", description="rua address of the suggested DMARC record; empty: dmarc-reports@<domain>."
    )
    return_path: str = Field(
        "",
        description="Label of a return-path subdomain to publish (MX to server.hostname and"
        " SPF), e.g. `bounces`; empty: none.",
    )
    check_interval: float = Field(
        3600.0, gt=0, description="Seconds between DNS checks of a sending domain's records."
    )
    pending_check_interval: float = Field(
        300.0, gt=0, description="Seconds between DNS checks of a domain not yet verified."
    )
    refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often each process reloads the sending domains and keys it signs"
        " with (a change made in one process reaches the others within this).",
    )

    @field_validator("spf_ip")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for a in value:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError as e:
                raise ValueError(f"{a!r} is not an IP address or network") from e
        return value


class WebhooksConfig(_Section):
    allow_http: bool = Field(
        False, description="Allow http:// webhook URLs (off: https only; for local testing)."
    )
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="Networks webhooks may be sent to although not public (loopback,"
        " private, link-local, ...), e.g. `127.0.0.0/8` for a receiver on this machine.",
    )
    secret_overlap: float = Field(
        86400.0,
        ge=0,
        description="Seconds a rotated-out secret keeps signing beside the new one.",
    )
    timeout: float = Field(10.0, gt=0, le=120, description="Seconds to wait for an answer.")
    concurrency: int = Field(
        16, ge=1, le=1000, description="Webhook requests in flight at once, per process."
    )
    max_endpoints: int = Field(
        20,
        ge=1,
        le=1000,
        description="Endpoints one API key may have (admin keys: those for every event).",
    )
    disable_after: float = Field(
        432000.0,
        gt=0,
        description="Seconds an endpoint may fail every delivery before it is disabled (5 days).",
    )

    @field_validator("allow_private_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class MailboxesConfig(_Section):
    allow_private_networks: list[str] = Field(
        default_factory=list,
        description="Networks a grant's IMAP and SMTP servers may be at although not public"
        " (loopback, private, link-local, ...), e.g. `127.0.0.0/8` for a server on this"
        " machine; otherwise mailgate connects only to globally reachable addresses.",
    )
    tls_ca_file: str = Field(
        "", description="Extra CA bundle for verifying the certificates of grants' servers."
    )
    enabled: bool = Field(
        True,
        description="Sync every valid grant's mailbox over IMAP (in the process that delivers);"
        " false: grants can still send, their mailboxes are not read.",
    )
    initial_sync_days: float = Field(
        90.0,
        gt=0,
        description="How far back the first sync of a folder reads (by the server's received"
        " date); older messages are not synced.",
    )
    poll_interval: float = Field(
        60.0,
        gt=0,
        description="Seconds between sync passes over every folder of a grant (new mail in"
        " INBOX arrives at once where the server offers IDLE).",
    )
    max_connections: int = Field(
        20,
        ge=2,
        description="IMAP connections open at once for all grants together; half of them at"
        " most wait in IDLE, the rest run sync passes.",
    )
    idle: bool = Field(
        True, description="Watch INBOX with IMAP IDLE where the server offers it (else poll)."
    )

    @field_validator("allow_private_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _check_networks(value)


class RetentionConfig(_Section):
    body_days: float = Field(
        30.0,
        ge=0,
        description="Days a finished message's body (its bytes) is kept after its last change;"
        " then it is purged, GET /v1/messages/{id}/raw answers 410 Gone, and its status,"
        " recipients and events stay. Finished: every recipient delivered, bounced, expired,"
        " cancelled or suppressed. Fractions allowed; 0 keeps bodies for ever.",
    )
    message_days: float = Field(
        90.0,
        ge=0,
        description="Days a finished message's row, recipients and events are kept after its"
        " last change (its body goes with them if still there); 0 keeps them for ever.",
    )
    webhook_days: float = Field(
        90.0,
        ge=0,
        description="Days settled webhook deliveries and their attempt log are kept; 0 keeps"
        " them for ever.",
    )
    expired_idempotency: bool = Field(
        True,
        description="Delete idempotency records once expired (they answer nothing after"
        " that either way); off keeps them.",
    )
    interval: float = Field(
        60.0, gt=0, description="Seconds between purge runs (in the process that delivers)."
    )
    batch_size: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Messages (or rows) purged per transaction: small, so taking mail in never"
        " waits long behind a purge.",
    )
    compact_below: float = Field(
        0.5,
        ge=0,
        le=1,
        description="SQLite: a body segment file no process appends to any more is rewritten"
        " (its live bodies copied out, then deleted) when live bodies fill less than this"
        " share of it; one with none is deleted. 0: only delete empty ones.",
    )


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    accept: AcceptConfig = Field(default_factory=AcceptConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    domains: DomainsConfig = Field(default_factory=DomainsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    mailboxes: MailboxesConfig = Field(default_factory=MailboxesConfig)

    _recipient_cap = model_validator(mode="before")(_one_recipient_cap)

    @model_validator(mode="after")
    def _delivery_shares(self) -> Config:
        """Delivery children split the connection caps (delivery_share): each needs one."""
        n = self.server.delivery_processes
        caps = self.delivery.max_connections_per_domain, self.delivery.max_connections_per_host
        if n > min(caps):
            raise ValueError(
                f"server.delivery_processes ({n}) is more than delivery.max_connections_per_"
                f"domain or _per_host ({min(caps)}): each delivery process gets a share of "
                "those caps and needs at least one connection"
            )
        return self

    def delivery_share(self) -> DeliveryConfig:
        """One delivery child's part of the per-domain and per-host connection caps and
        the domain rate, so that serve's delivery_processes children together keep to
        the configured ones (each counts only its own connections)."""
        n, d = self.server.delivery_processes, self.delivery
        if n <= 1:
            return d
        return d.model_copy(
            update={
                "max_connections_per_domain": d.max_connections_per_domain // n,
                "max_connections_per_host": d.max_connections_per_host // n,
                "domain_rate": d.domain_rate / n,
            }
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite:///{self.data_dir / 'mailgate.db'}"


SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "smtp": SmtpConfig,
    "http": HttpConfig,
    "accept": AcceptConfig,
    "auth": AuthConfig,
    "delivery": DeliveryConfig,
    "domains": DomainsConfig,
    "webhooks": WebhooksConfig,
    "retention": RetentionConfig,
    "mailboxes": MailboxesConfig,
}


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        model = SECTIONS.get(section)
        if model is None or key not in model.model_fields:
            raise ConfigError(f"config: unknown environment setting {name}")
        annotation = model.model_fields[key].annotation
        value: Any = raw
        if annotation == list[str]:
            value = json.loads(raw) if raw.startswith("[") else [p for p in raw.split(",") if p]
        overrides.setdefault(section, {})[key] = value
    return overrides


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate."""
    env = dict(os.environ if environ is None else environ)
    path = path or env.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path}: not valid TOML: {exc}") from None
    for section, values in _env_overrides(env).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config: {section}: expected a table")
        target.update(values)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if not where:  # a rule across settings: its message names them
            raise ConfigError(f"config: {first['msg'].removeprefix('Value error, ')}") from None
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"config: {where}: unknown setting") from None
        got = first.get("input")
        raise ConfigError(f"config: {where}: {first['msg']} (got {got!r})") from None


def render_config_docs() -> str:
    """docs/config.md, generated from the schema."""
    lines = [
        "# Configuration",
        "",
        "Generated from `src/mailgate/config.py` by `mailgate config-docs`; do not edit by hand.",
        "",
        "Settings live in a TOML file (`mailgate serve --config mailgate.toml`, or the",
        "`MAILGATE_CONFIG` environment variable) under the section headers below. Any setting",
        "can be overridden by an environment variable `MAILGATE_<SECTION>_<KEY>`, for example",
        "`MAILGATE_SMTP_PORT=2526`; lists take commas or a JSON array. Unknown keys and bad",
        "values stop start-up with one line naming the key (exit status 2).",
        "",
    ]
    for section, model in SECTIONS.items():
        lines += [f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            type_name = getattr(info.annotation, "__name__", str(info.annotation))
            if str(info.annotation).startswith("typing.Literal"):
                type_name = " \\| ".join(repr(a) for a in info.annotation.__args__)  # type: ignore[union-attr]
            lines.append(
                f"| `{key}` | {type_name} | `{json.dumps(default)}` | {info.description} |"
            )
        lines.append("")
    return "\n".join(lines)
