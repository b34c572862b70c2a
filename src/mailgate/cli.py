"""The `mailgate` command line."""

from __future__ import annotations

import csv
import datetime
import re
import shutil
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from cryptography import x509
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from mailgate import keys as api_keys
from mailgate import logs
from mailgate.app import DNS_TIMEOUT, App, Role, check_data_dir, make_store, shared_metrics_dir
from mailgate.config import Config, load_config, render_config_docs
from mailgate.domains.manage import DomainAdmin, policy_of
from mailgate.errors import ConfigError, MailgateError, RequestError, StartupError, StoreError
from mailgate.events.endpoints import WebhookAdmin
from mailgate.http.domains import domain_out
from mailgate.models import (
    ApiKey,
    Domain,
    MessageQuery,
    RecipientStatus,
    Scope,
    Suppression,
    SuppressionReason,
    Webhook,
    id_time,
)
from mailgate.process import freeze_heap, share_metrics, tune_interpreter
from mailgate.resolver import make_resolver
from mailgate.secretbox import SecretBox
from mailgate.store import Store
from mailgate.suppressions import CSV_FIELDS, csv_row, entries_from_csv, entry_problem, normalize
from mailgate.tls import write_self_signed

T = TypeVar("T")
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="mailgate: a self-hosted email API."
)
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
queue_app = typer.Typer(no_args_is_help=True, help="Look at and steer the delivery queue.")
app.add_typer(keys_app, name="keys")
domains_app = typer.Typer(
    no_args_is_help=True, help="Sending domains: DNS records to publish, DKIM keys, checks."
)
app.add_typer(queue_app, name="queue")
app.add_typer(domains_app, name="domains")
webhooks_app = typer.Typer(
    no_args_is_help=True, help="Webhook endpoints: add (secret shown once), list, test, remove."
)
app.add_typer(webhooks_app, name="webhooks")
suppressions_app = typer.Typer(
    no_args_is_help=True, help="The suppression list: addresses mail is not sent to."
)
app.add_typer(suppressions_app, name="suppressions")
grants_app = typer.Typer(
    no_args_is_help=True, help="Connected mailboxes (grants): list, delete (made over HTTP)."
)
app.add_typer(grants_app, name="grants")
out = Console()
err = Console(stderr=True)

SECRET_SETTINGS = (("server", "secret_key"), ("delivery", "smarthost_password"))
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $MAILGATE_CONFIG)."),
]


def _say(line: str) -> None:
    """One unwrapped line on stderr (rich would wrap long paths)."""
    print(line, file=sys.stderr)


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop; turn expected errors into one line and an exit code."""
    try:
        import uvloop

        result: T = uvloop.run(fn())
        return result
    except (ConfigError, StartupError) as exc:
        _say(str(exc))
        raise typer.Exit(2) from None
    except StoreError as exc:
        _say(str(exc))
        raise typer.Exit(1) from None
    except RequestError as exc:
        _say(f"error: {exc.message}")
        raise typer.Exit(1) from None
    except MailgateError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(1) from None


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except (ConfigError, StartupError) as exc:
        _say(str(exc))
        raise typer.Exit(2) from None


async def _with_store(config: Config, fn: Callable[[Store], Awaitable[T]]) -> T:
    store = make_store(config)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def serve(
    config: ConfigOpt = None,
    role: Annotated[Role, typer.Option(help="Which components this process runs.")] = Role.ALL,
    ready_fd: Annotated[
        int | None, typer.Option(hidden=True, help="Write one byte here once listening.")
    ] = None,
) -> None:
    """Run mailgate (SMTP relay, HTTP API, delivery) until SIGTERM / SIGINT."""
    cfg = _config(config)
    logs.configure(cfg.server.log_level, cfg.server.log_format)
    tune_interpreter()
    try:
        check_data_dir(cfg)
    except StartupError as exc:
        _say(str(exc))
        raise typer.Exit(2) from None
    metrics_dir = shared_metrics_dir(cfg, role)
    if metrics_dir is not None:
        share_metrics(metrics_dir)
    _run(App(cfg, role, config, ready_fd, metrics_dir, on_ready=freeze_heap).run)


@app.command()
def status(config: ConfigOpt = None) -> None:
    """What an operator looks at first: recipients by status, the routes with the most
    mail waiting (and the oldest), the processes that pinged the store, disk use of the
    data directory, and the certificate's expiry."""
    cfg = _config(config)

    async def read(
        store: Store,
    ) -> tuple[
        dict[RecipientStatus, int], list[tuple[str, int, int, str]], list[tuple[str, float]]
    ]:
        return (
            await store.status_counts(),
            await store.waiting_by_domain(10),
            await store.nodes_seen(),
        )

    counts, waiting, nodes = _run(lambda: _with_store(cfg, read))
    now = time.time()
    print("recipients: " + ", ".join(f"{s.value} {n:,}" for s, n in counts.items()))
    table = Table("route", "waiting", "deferred", "oldest waiting")
    for route, deferred, total, oldest in waiting:
        table.add_row(route, f"{total:,}", f"{deferred:,}", _age(now - id_time(oldest)))
    if waiting:
        out.print(table)
    for name, seen in nodes[:5]:
        print(f"process {name}: last seen {_age(now - seen)} ago")
    data_dir = Path(cfg.server.data_dir)
    used = (
        sum(
            p.stat().st_blocks * 512
            for p in data_dir.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        if data_dir.exists()
        else 0
    )
    free = shutil.disk_usage(data_dir).free if data_dir.exists() else 0
    print(f"disk: {used / 2**20:,.1f} MiB in {data_dir}, {free / 2**30:,.1f} GiB free")
    if cfg.smtp.tls_cert:
        print(_certificate_line(Path(cfg.smtp.tls_cert), now))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _certificate_line(path: Path, now: float) -> str:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"certificate {path}: cannot read it: {exc}"
    left = cert.not_valid_after_utc.timestamp() - now
    warning = "  EXPIRED" if left < 0 else ("  renew soon" if left < 14 * 86400 else "")
    return f"certificate {path}: expires in {_age(left)}{warning}"


@app.command()
def doctor(config: ConfigOpt = None) -> None:
    """Checks an operator runs before trusting the server: its ports answer, the
    certificate is valid for a while yet, every sending domain's DNS records are in
    place, the disk has room, the clock has not gone back behind stored mail. Each check
    one line, ok or a problem; exit status 1 when any found a problem."""
    cfg = _config(config)
    now = time.time()
    lines: list[tuple[bool, str]] = []
    for name, host, port, on in (
        ("smtp", cfg.smtp.host, cfg.smtp.port, cfg.smtp.enabled),
        ("http", cfg.http.host, cfg.http.port, cfg.http.enabled),
    ):
        if on:
            lines.append(_port_check(name, host, port))
    if cfg.smtp.tls_cert:
        cert_line = _certificate_line(Path(cfg.smtp.tls_cert), now)
        ok = "expires in" in cert_line and "EXPIRED" not in cert_line and "soon" not in cert_line
        lines.append((ok, cert_line))
    data_dir = Path(cfg.server.data_dir)
    if data_dir.exists():
        free = shutil.disk_usage(data_dir).free
        lines.append((free > DOCTOR_MIN_FREE, f"disk: {free / 2**30:,.1f} GiB free in {data_dir}"))

    async def from_store(store: Store) -> list[tuple[bool, str]]:
        found: list[tuple[bool, str]] = []
        admin = _admin(store, cfg)
        for domain in await store.list_domains():
            checked = await admin.verify(domain.name)
            shown = domain_out(checked, policy_of(cfg))
            bad = [r.id for r in shown.records if r.status.value != "verified" and not r.retired]
            what = "every record verified" if not bad else "not verified: " + ", ".join(bad)
            found.append((not bad, f"domain {shown.name}: {what}"))
        newest = await store.list_messages(MessageQuery(limit=1))
        if newest:
            ahead = newest[0].created_at - time.time()
            found.append(
                (
                    ahead < 60,
                    f"clock: the newest message is {_age(abs(ahead))}"
                    + (" in the future: this clock went back" if ahead >= 60 else " old"),
                )
            )
        return found

    lines += _run(lambda: _with_store(cfg, from_store))
    for ok, line in lines:
        print(("ok       " if ok else "PROBLEM  ") + line)
    if not all(ok for ok, _ in lines):
        raise typer.Exit(1)


DOCTOR_MIN_FREE = 1 << 30  # bytes free below which the disk is a problem


def _port_check(name: str, host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True, f"{name}: {host}:{port} answers"
    except OSError as exc:
        return (
            False,
            f"{name}: {host}:{port} does not answer ({exc.strerror or exc}): is serve running?",
        )


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Create or upgrade the database schema."""
    cfg = _config(config)

    async def run(store: Store) -> None:
        return None

    _run(lambda: _with_store(cfg, run))
    out.print(f"schema is current: {cfg.store_url.split('@')[-1]}")


@app.command("check-config")
def check_config(config: ConfigOpt = None) -> None:
    """Validate the configuration and print it."""
    cfg = _config(config)
    shown = cfg.model_dump(mode="json")
    for section, key in SECRET_SETTINGS:  # printed configs end up in tickets and logs
        if shown[section][key]:
            shown[section][key] = "<set>"
    shown["store"]["url"] = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1<set>@", shown["store"]["url"])
    out.print_json(data=shown)


@app.command("config-docs")
def config_docs(
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print docs/config.md, generated from the config schema."""
    text = render_config_docs()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write mailgate.toml.")] = Path(
        "."
    ),
    hostname: Annotated[str, typer.Option(help="This server's name.")] = "localhost",
    force: Annotated[bool, typer.Option(help="Overwrite an existing mailgate.toml.")] = False,
) -> None:
    """Write a config with safe defaults, a development TLS pair and the first admin key."""
    path = directory / "mailgate.toml"
    if path.exists() and not force:
        _say(f"{path} exists; use --force to overwrite")
        raise typer.Exit(1)
    data_dir = (directory / "data").resolve()
    cert, key = write_self_signed(data_dir / "tls", hostname)
    path.write_text(
        "# mailgate configuration; every key is documented in docs/config.md\n"
        f'[server]\nhostname = "{hostname}"\ndata_dir = "{data_dir}"\n\n'
        '[smtp]\nhost = "127.0.0.1"\nport = 2525\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n\n'
        '[http]\nhost = "127.0.0.1"\nport = 8025\n'
    )
    cfg = _config(path)

    async def run(store: Store) -> str:
        _, secret = await api_keys.create_key(store, "admin", [Scope.ADMIN, Scope.SEND, Scope.READ])
        return secret

    secret = _run(lambda: _with_store(cfg, run))
    out.print(f"wrote {path}")
    out.print("admin API key (shown once, store it now):")
    print(secret)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    scope: Annotated[str, typer.Option(help="Comma-separated: send,read,admin.")] = "send",
    sender_domain: Annotated[
        list[str] | None, typer.Option(help="Limit MAIL FROM / From: to this domain (repeatable).")
    ] = None,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox", help="Its mail is simulated, never sent (see docs/suppressions.md)."
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    cfg = _config(config)
    try:
        scopes = [Scope(s.strip()) for s in scope.split(",") if s.strip()]
    except ValueError:
        _say(f"--scope: expected send, read or admin, got {scope!r}")
        raise typer.Exit(2) from None
    if not scopes:
        _say("--scope: give at least one of send, read, admin")
        raise typer.Exit(2)
    problem = api_keys.sandbox_problem(scopes, sandbox)
    if problem is not None:
        _say(f"--sandbox: {problem}")
        raise typer.Exit(2)

    async def run(store: Store) -> str:
        key, secret = await api_keys.create_key(store, name, scopes, sender_domain or [], sandbox)
        kind = "sandbox key" if sandbox else "key"
        _say(f"created {kind} {key.id} ({name}); the secret is shown once:")
        return secret

    print(_run(lambda: _with_store(cfg, run)))


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List keys (never their secrets)."""
    cfg = _config(config)
    found = _run(lambda: _with_store(cfg, lambda s: s.list_keys()))
    table = Table("id", "name", "scopes", "sender domains", "created", "revoked")
    for k in found:
        table.add_row(
            k.id,
            k.name,
            ",".join(sorted(k.scopes)) + (" (sandbox)" if k.sandbox else ""),
            ",".join(k.sender_domains) or "any",
            _time(k.created_at),
            _time(k.revoked_at),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOpt = None) -> None:
    """Revoke a key; it stops working at once."""
    cfg = _config(config)
    done = _run(lambda: _with_store(cfg, lambda s: s.revoke_key(key_id, _now())))
    if not done:
        _say(f"no active key {key_id}")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


@grants_app.command("list")
def grants_list(config: ConfigOpt = None) -> None:
    """List every grant (never its credentials)."""
    cfg = _config(config)
    found = _run(lambda: _with_store(cfg, lambda s: s.grants()))
    table = Table("id", "email", "key", "imap", "smtp", "status", "created")
    for g in found:
        table.add_row(
            g.id,
            g.email,
            g.api_key_id or "-",
            f"{g.imap.host}:{g.imap.port} ({g.imap.tls})",
            f"{g.smtp.host}:{g.smtp.port} ({g.smtp.tls})",
            g.status.value + (f": {g.error}" if g.error else ""),
            _time(g.created_at),
        )
    out.print(table)


@grants_app.command("delete")
def grants_delete(grant_id: str, config: ConfigOpt = None) -> None:
    """Delete a grant: its credentials are forgotten, its mailbox no longer read."""
    cfg = _config(config)
    if not _run(lambda: _with_store(cfg, lambda s: s.delete_grant(grant_id))):
        _say(f"no grant {grant_id}")
        raise typer.Exit(1)
    out.print(f"deleted {grant_id}")


def _now() -> float:
    import time

    return time.time()


@queue_app.command("list")
def queue_list(
    status: Annotated[
        RecipientStatus | None, typer.Option(help="Only messages with a recipient in this status.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    config: ConfigOpt = None,
) -> None:
    """List recent messages with their recipients' statuses."""
    cfg = _config(config)

    async def run(store: Store) -> tuple[list[list[str]], dict[RecipientStatus, int]]:
        rows = []
        for m in await store.list_messages(MessageQuery(status=status, limit=limit)):
            rcpts = await store.recipients(m.id)
            summary = ", ".join(f"{r.address}:{r.status}" for r in rcpts[:3])
            if len(rcpts) > 3:
                summary += f" (+{len(rcpts) - 3})"
            rows.append([m.id, _time(m.created_at), m.source, m.sender or "<>", summary])
        return rows, await store.status_counts()

    rows, counts = _run(lambda: _with_store(cfg, run))
    table = Table("id", "created (UTC)", "source", "from", "recipients")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print("  ".join(f"{s}: {n}" for s, n in counts.items()))


@queue_app.command("show")
def queue_show(message_id: str, config: ConfigOpt = None) -> None:
    """One message: recipients and its event timeline."""
    cfg = _config(config)

    async def run(store: Store):  # type: ignore[no-untyped-def]
        return (
            await store.get_message(message_id),
            await store.recipients(message_id),
            await store.events(message_id),
        )

    message, rcpts, events = _run(lambda: _with_store(cfg, run))
    if message is None:
        _say(f"no message {message_id}")
        raise typer.Exit(1)
    out.print(
        f"message {message.id}  from <{message.sender}>  {message.size} bytes  "
        f"via {message.source}  subject: {message.subject or '-'}"
    )
    table = Table("recipient", "status", "attempts", "next attempt", "last reply", "host")
    for r in rcpts:
        reply = f"{r.last_reply.code} {r.last_reply.text}" if r.last_reply else "-"
        table.add_row(
            r.address,
            r.status,
            str(r.attempts),
            _time(r.next_attempt_at),
            reply,
            r.remote_host or "-",
        )
    out.print(table)
    timeline = Table("time (UTC)", "event", "recipient", "details")
    for e in events:
        timeline.add_row(_time(e.at), e.kind, str(e.recipient_id or "-"), str(e.details))
    out.print(timeline)


@queue_app.command("retry")
def queue_retry(message_id: str, config: ConfigOpt = None) -> None:
    """Make a message's waiting recipients due now."""
    cfg = _config(config)
    n = _run(lambda: _with_store(cfg, lambda s: s.retry_now(message_id, _now())))
    out.print(f"{n} recipient(s) due now")


@queue_app.command("cancel")
def queue_cancel(message_id: str, config: ConfigOpt = None) -> None:
    """Cancel a message's recipients that are not delivered yet."""
    cfg = _config(config)
    n = _run(lambda: _with_store(cfg, lambda s: s.cancel(message_id, _now())))
    out.print(f"{n} recipient(s) cancelled")


# -- sending domains -----------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the domain as the API answers it.")]


def _admin(store: Store, cfg: Config) -> DomainAdmin:
    return DomainAdmin(
        store,
        SecretBox.open(cfg.server.secret_key, cfg.data_dir),
        policy_of(cfg),
        make_resolver(cfg.delivery.resolver, DNS_TIMEOUT),
        (cfg.domains.check_interval, cfg.domains.pending_check_interval),
    )


def _domain_command(
    cfg: Config, work: Callable[[DomainAdmin], Awaitable[Domain]], as_json: bool
) -> None:
    domain = _run(lambda: _with_store(cfg, lambda store: work(_admin(store, cfg))))
    shown = domain_out(domain, policy_of(cfg))
    if as_json:
        print(shown.model_dump_json(indent=2))
        return
    # plain lines, never wrapped or cut: each value is copied into a DNS zone as it is
    print(f"{shown.name}: {shown.status}" + (" (signing)" if shown.sending else ""))
    for r in shown.records:
        notes = "".join(
            f" ({n})" for n, on in (("retired", r.retired), ("signing", r.signing)) if on
        )
        print(f"\n{r.id}{notes}: {r.status.value}\n  {r.name}. {r.type}\n  {r.value}")
        if r.status.value == "mismatched":
            print("  found: " + " | ".join(r.found))


@domains_app.command("add")
def domains_add(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Add a domain with new DKIM keys (RSA-2048 and Ed25519); prints what to publish."""
    _domain_command(_config(config), lambda admin: admin.add(name), as_json)


@domains_app.command("show")
def domains_show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """A domain's records and what the last check found."""
    _domain_command(_config(config), lambda admin: admin.get(name), as_json)


@domains_app.command("verify")
def domains_verify(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check the domain's records in DNS now."""
    _domain_command(_config(config), lambda admin: admin.verify(name), as_json)


@domains_app.command("rotate")
def domains_rotate(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """New DKIM keys under a new selector; the old ones sign until the new are verified."""
    _domain_command(_config(config), lambda admin: admin.rotate(name), as_json)


@domains_app.command("retire")
def domains_retire(
    name: str, selector: str, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop using an old key (after a rotation), so its record can leave DNS."""
    _domain_command(_config(config), lambda admin: admin.retire(name, selector), as_json)


@domains_app.command("remove")
def domains_remove(name: str, config: ConfigOpt = None) -> None:
    """Remove a domain and its keys: its mail is no longer signed."""
    cfg = _config(config)
    _run(lambda: _with_store(cfg, lambda store: _admin(store, cfg).remove(name)))
    out.print(f"removed {name}")


@domains_app.command("list")
def domains_list(config: ConfigOpt = None) -> None:
    """Every domain with its status."""
    cfg = _config(config)
    domains = _run(lambda: _with_store(cfg, lambda store: store.list_domains()))
    table = Table("domain", "status", "checked", "selectors")
    for d in domains:
        shown = domain_out(d, policy_of(cfg))
        selectors = ", ".join(k.selector for k in d.keys if k.retired_at is None)
        table.add_row(d.name, shown.status, _time(d.checked_at), selectors)
    out.print(table)


# -- webhook endpoints ---------------------------------------------------------------------

# The CLI acts as an admin: its endpoints get every key's events.
CLI_KEY = ApiKey("cli", "cli", frozenset({Scope.ADMIN}), (), 0.0, None)


def _hooks(store: Store, cfg: Config) -> WebhookAdmin:
    box = SecretBox.open(cfg.server.secret_key, cfg.data_dir)
    return WebhookAdmin(store, box, cfg.webhooks, make_resolver(cfg.delivery.resolver, DNS_TIMEOUT))


@webhooks_app.command("add")
def webhooks_add(
    url: str,
    event: Annotated[list[str], typer.Option(help="An event type (repeatable).")],
    description: Annotated[str, typer.Option(help="A label.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Add an endpoint for every key's events; its signing secret is printed once."""
    cfg = _config(config)

    async def run(store: Store) -> tuple[Webhook, str]:
        return await _hooks(store, cfg).create(CLI_KEY, url, event, description)

    hook, secret = _run(lambda: _with_store(cfg, run))
    _say(f"added {hook.id} -> {hook.url}; its signing secret is shown once:")
    print(secret)


@webhooks_app.command("list")
def webhooks_list(config: ConfigOpt = None) -> None:
    """Every endpoint, with its state."""
    cfg = _config(config)
    hooks = _run(lambda: _with_store(cfg, lambda store: store.list_webhooks(None)))
    for h in hooks:  # plain lines: ids and URLs are copied whole
        state = "enabled" if h.enabled else f"disabled ({h.disabled_reason})"
        owner = h.api_key_id or "every key (admin)"
        print(f"{h.id} {state} {h.url}\n  events: {', '.join(h.events)}; owner: {owner}")


@webhooks_app.command("test")
def webhooks_test(hook_id: str, config: ConfigOpt = None) -> None:
    """Queue a webhook.test event for the endpoint (sent by the running server)."""
    cfg = _config(config)
    event_id = _run(lambda: _with_store(cfg, lambda s: _hooks(s, cfg).send_test(CLI_KEY, hook_id)))
    out.print(f"queued {event_id}")


@webhooks_app.command("rotate")
def webhooks_rotate(hook_id: str, config: ConfigOpt = None) -> None:
    """A new signing secret (printed once); the old one signs beside it for a while."""
    cfg = _config(config)
    hook, secret = _run(
        lambda: _with_store(cfg, lambda s: _hooks(s, cfg).rotate_secret(CLI_KEY, hook_id))
    )
    _say(f"rotated {hook.id}; the new secret is shown once:")
    print(secret)


@webhooks_app.command("remove")
def webhooks_remove(hook_id: str, config: ConfigOpt = None) -> None:
    """Remove an endpoint and its pending deliveries."""
    cfg = _config(config)
    _run(lambda: _with_store(cfg, lambda s: _hooks(s, cfg).delete(CLI_KEY, hook_id)))
    out.print(f"removed {hook_id}")


# -- the suppression list ------------------------------------------------------------------

IMPORT_BATCH = 1000  # entries per transaction


@suppressions_app.command("list")
def suppressions_list(
    reason: Annotated[SuppressionReason | None, typer.Option(help="Only this reason.")] = None,
    prefix: Annotated[str, typer.Option(help="Addresses starting with this.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    config: ConfigOpt = None,
) -> None:
    """List suppressed addresses, in address order."""
    cfg = _config(config)
    why = reason.value if reason else ""
    found = _run(
        lambda: _with_store(cfg, lambda s: s.list_suppressions(why, normalize(prefix), None, limit))
    )
    table = Table("address", "reason", "domain", "since", "message")
    for e in found:
        table.add_row(
            e.address, e.reason, e.scope or "any", _time(e.created_at), e.message_id or "-"
        )
    out.print(table)


@suppressions_app.command("add")
def suppressions_add(
    address: list[str],
    reason: Annotated[SuppressionReason, typer.Option()] = SuppressionReason.MANUAL,
    domain: Annotated[str, typer.Option(help="Only mail From this sending domain.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Suppress one or more addresses."""
    cfg = _config(config)
    now = time.time()
    entries = [Suppression(normalize(a), reason, now, normalize(domain)) for a in address]
    for entry in entries:
        problem = entry_problem(entry)
        if problem is not None:
            _say(f"{problem[0]}: {problem[1]} ({entry.address})")
            raise typer.Exit(2)
    _run(lambda: _with_store(cfg, lambda s: s.put_suppressions(entries)))
    out.print(f"suppressed {len(entries)}")


@suppressions_app.command("remove")
def suppressions_remove(
    address: str,
    domain: Annotated[
        str | None, typer.Option(help="Only the entry of this scope (default: every scope).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Take an address off the list: mail to it is sent again."""
    cfg = _config(config)
    scope = None if domain is None else normalize(domain)
    removed = _run(lambda: _with_store(cfg, lambda s: s.delete_suppression(address, scope)))
    if not removed:
        _say(f"{address} is not suppressed")
        raise typer.Exit(1)
    out.print(f"removed {removed}")


@suppressions_app.command("import")
def suppressions_import(
    path: Annotated[
        Path, typer.Argument(help="CSV with a header naming address (reason, domain).")
    ],
    reason: Annotated[
        SuppressionReason, typer.Option(help="For rows without a reason.")
    ] = SuppressionReason.MANUAL,
    config: ConfigOpt = None,
) -> None:
    """Import a CSV: every row is checked first (nothing is written if one is bad), then
    written in batches of 1,000, with a progress bar."""
    cfg = _config(config)
    now = time.time()
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # a spreadsheet's BOM too
            total = sum(1 for _ in entries_from_csv(f, reason, now))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _say(f"{path}: {exc}")
        raise typer.Exit(2) from None

    async def write(store: Store) -> None:
        with path.open(newline="", encoding="utf-8-sig") as f, Progress(console=err) as bar:
            task = bar.add_task("importing", total=total)
            batch: list[Suppression] = []
            for entry in entries_from_csv(f, reason, now):
                batch.append(entry)
                if len(batch) == IMPORT_BATCH:
                    await store.put_suppressions(batch)
                    bar.advance(task, len(batch))
                    batch = []
            if batch:
                await store.put_suppressions(batch)
                bar.advance(task, len(batch))

    _run(lambda: _with_store(cfg, write))
    out.print(f"imported {total}")


@suppressions_app.command("export")
def suppressions_export(
    path: Annotated[
        Path | None, typer.Argument(help="CSV file (default: standard output).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write the whole list as CSV (address, reason, domain, created_at, message_id)."""
    cfg = _config(config)

    async def export(store: Store) -> int:
        target = path.open("w", newline="", encoding="utf-8") if path else sys.stdout
        try:
            writer = csv.writer(target)
            writer.writerow(CSV_FIELDS)
            cursor, written = None, 0
            while True:
                page = await store.list_suppressions("", "", cursor, IMPORT_BATCH)
                writer.writerows(csv_row(e) for e in page)
                written += len(page)
                if len(page) < IMPORT_BATCH:
                    return written
                cursor = (page[-1].address, page[-1].scope)
        finally:
            if path:
                target.close()

    written = _run(lambda: _with_store(cfg, export))
    _say(f"exported {written}")


# -- retention by hand (the server purges every retention.interval; docs/retention.md) ----


class _StepBars:
    """Retention's reports (a step, how many so far) as rich bars on stderr, one per step;
    `totals` (a count made first) gives each bar its end, else it runs without one."""

    def __init__(self, verb: str, totals: dict[str, int] | None = None) -> None:
        self.verb, self.totals = verb, totals or {}
        self.bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=err)
        self.tasks: dict[str, Any] = {}

    def __call__(self, step: str, done: int) -> None:
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(f"{self.verb} {step}", total=self.totals.get(step))
        total = self.totals.get(step)
        self.bar.update(self.tasks[step], completed=done, total=max(total, done) if total else None)

    def __enter__(self) -> _StepBars:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.bar.tasks:  # a step ends where it ended, whatever the count said
            self.bar.update(task.id, total=task.completed)
        self.bar.stop()


@app.command("purge")
def purge_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would go (reads, no changes).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run one retention purge round now, by the [retention] settings, with a bar per step:
    counted first, then purged (oldest first, in the server's small transactions). Safe
    while the server runs: every step is idempotent."""
    from mailgate.retention import Retention, Round

    cfg = _config(config)
    kept = cfg.retention
    if not (kept.message_days or kept.body_days or kept.webhook_days or kept.expired_idempotency):
        _say("retention keeps everything (retention.*_days = 0): nothing to purge")
        return
    now = time.time()  # one cutoff for the count and the purge

    async def run(store: Store) -> tuple[Round, Round | None, float]:
        with _StepBars("counting") as bars:
            found = await Retention(store, kept, clock=lambda: now, report=bars).dry_run()
        if dry_run:
            return found, None, 0.0
        totals = {"messages": found.messages, "bodies": found.bodies}
        totals |= {"webhooks": found.webhook_rows, "idempotency": found.idempotency}
        began = time.monotonic()
        with _StepBars("purging", totals) as bars:
            done = await Retention(store, kept, clock=lambda: now, report=bars).run_once()
        return found, done, time.monotonic() - began

    found, done, seconds = _run(lambda: _with_store(cfg, run))
    if done is None:
        print(f"would purge {found.describe()} (compaction not counted)")
    else:
        print(f"purged {done.describe()} in {seconds:.1f} s")


# -- backup and restore (SQLite; on PostgreSQL pg_dump and pg_restore, docs/operations.md) --


class _Bar:
    """backup.py's progress reports as a rich bar on stderr, one line per step; shown
    from the first report, so a refusal before any copying stays one line."""

    def __init__(self) -> None:
        self.bar = Progress(console=err)
        self.tasks: dict[str, Any] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.tasks:
            self.bar.start()
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(step, total=total)
        self.bar.update(self.tasks[step], completed=done, total=total)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tasks:
            self.bar.stop()


def _sqlite_db(cfg: Config, command: str, tool: str) -> Path:
    from mailgate.backup import sqlite_path

    db = sqlite_path(cfg.store_url)
    if db is None:
        _say(
            f"{command}: the store is PostgreSQL, where message bodies are in the database:"
            f" use {tool} (see docs/operations.md)"
        )
        raise typer.Exit(2)
    return db


def _key_file(cfg: Config) -> Path | None:
    """The data directory's secret.key when it is the key that seals stored secrets."""
    return None if cfg.server.secret_key else cfg.data_dir / "secret.key"


@app.command("backup")
def backup_command(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) directory for the backup.")],
    config: ConfigOpt = None,
) -> None:
    """Copy the SQLite database and the message bodies it references to DEST, while the
    server runs; restore it with `mailgate restore DEST`."""
    from mailgate import backup as backups

    cfg = _config(config)
    db = _sqlite_db(cfg, "backup", "pg_dump")
    problem = backups.dest_problem(dest)
    if problem:
        _say(problem)
        raise typer.Exit(1)
    # Called directly, not through _run: a blocking copy that Ctrl-C must stop at once
    # (the partial copy is then removed), where a coroutine would only be cancelled after.
    try:
        with _Bar() as bar:
            taken = backups.take_backup(db, dest, _key_file(cfg), bar)
    except MailgateError as exc:
        _say(str(exc))
        raise typer.Exit(1) from None
    m = taken.manifest
    print(
        f"backed up {m.messages} messages ({len(m.segments)} body segments),"
        f" {backups.megabytes(taken.bytes)} in {taken.seconds:.1f} s to {dest}"
    )


@app.command("restore")
def restore_command(
    src: Annotated[Path, typer.Argument(help="A directory `mailgate backup` wrote.")],
    force: Annotated[
        bool, typer.Option(help="Move a database already there aside instead of refusing.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Verify a backup, then bring it back as the configured SQLite database (no server
    may run on it)."""
    from mailgate import backup as backups

    cfg = _config(config)
    db = _sqlite_db(cfg, "restore", "pg_restore")
    try:
        with _Bar() as bar:
            done = backups.restore_backup(src, db, _key_file(cfg), force=force, report=bar)
    except MailgateError as exc:
        _say(str(exc))
        raise typer.Exit(1) from None
    m = done.manifest
    if done.aside is not None:
        _say(f"moved the database that was there to {done.aside}")
    if m.key_file is not None and cfg.server.secret_key:
        _say(
            "note: the backup has a secret.key, not restored because server.secret_key is"
            f" set; its DKIM keys and webhook secrets need that key ({src / 'secret.key'})"
        )
    print(
        f"restored {m.messages} messages ({done.bodies} bodies in {len(m.segments)} segments),"
        f" {backups.megabytes(done.bytes)} taken {_time(m.taken_at)} UTC, into {db}"
    )


def main() -> None:
    app()


__all__ = ["main"]


if __name__ == "__main__":
    main()
