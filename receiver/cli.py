"""The `sms-receiver` command: serve, worker, migrate, keys, tenants, reprocess, normalize,
demo, erase."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal as signal_module
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from normalizers.base import CallbackRequest, ParseError, parse_timestamp
from normalizers.registry import DEFAULT_REGISTRY, Registry
from receiver.app import create_app
from receiver.config import MIN_TOKEN_LENGTH, Settings
from receiver.context import AppContext
from receiver.corrections.command import RunRequest, reprocess_all
from receiver.corrections.run import APPLY, DRY_RUN
from receiver.delivery.dispatcher import Dispatcher
from receiver.demo import run_demo, run_failover_demo
from receiver.http.errors import ReceiverError
from receiver.http.fields import EARLIEST, typed_e164
from receiver.ingest.reprocess import reprocess
from receiver.ingest.spool import SpoolInUse
from receiver.logs import configure_logging, configured_secrets
from receiver.optouts.files import (
    OptOutFileError,
    entries_csv,
    export_rows,
    import_entries,
    read_entries,
)
from receiver.optouts.keys import check_key
from receiver.routing.files import RoutesFileError, read_routes, routes_toml
from receiver.routing.health import HealthWatch
from receiver.sending.scheduler import Scheduler
from receiver.sending.silence import SilenceSweep
from receiver.storage import routes, tenants
from receiver.storage.apikeys import SCOPES, create_key, list_keys, revoke_key
from receiver.storage.migrate import apply_migrations, migrations_dir, pending_migrations
from receiver.storage.notify import Signal
from receiver.storage.pool import open_database, resolve_dsn, session_settings, wait_for_database
from receiver.storage.tenants import DEFAULT_TENANT, TenantError
from receiver.tenants.routes import owned_number
from receiver.upkeep.erasure import NotANumber, erase, spellings
from receiver.upkeep.retention import Upkeep

log = structlog.get_logger("receiver.cli")


def build_parser(registry: Registry) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sms-receiver", description="SMS delivery-report hub.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve HTTP")
    serve.add_argument("--host", help="listen address (default LISTEN_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default LISTEN_PORT)")
    serve.add_argument(
        "--sandbox", action="store_true", help="mount the simulated providers (SANDBOX=true)"
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply migrations, only check that none is pending (MIGRATE_ON_START=false)",
    )

    commands.add_parser("migrate", help="apply pending migrations and exit")
    commands.add_parser("worker", help="run the webhook dispatcher alone (no HTTP server)")

    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="a new key; its secret is printed once")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=list(SCOPES),
        help="repeatable: send, read, admin (admin can do everything)",
    )
    create.add_argument("--name", default="unnamed", help="who or what uses it")
    owner = create.add_mutually_exclusive_group()
    owner.add_argument(
        "--tenant", help=f"the tenant whose data the key reaches (default: {DEFAULT_TENANT})"
    )
    owner.add_argument(
        "--operator",
        action="store_true",
        help="a key of no tenant: every tenant's data, and the operator's endpoints",
    )
    key_commands.add_parser("list", help="every key, without secrets, with its tenant")
    revoke = key_commands.add_parser("revoke", help="a key stops working at once")
    revoke.add_argument("key_id")

    add_tenant_commands(commands, registry)
    add_route_commands(commands, registry)
    add_opt_out_commands(commands)
    add_sandbox_commands(commands, registry)

    again = commands.add_parser(
        "reprocess",
        help="normalise unparsed raw callbacks again; with --all, correct history",
    )
    again.add_argument("--provider", choices=sorted(registry), help="only this provider")
    again.add_argument(
        "--all",
        action="store_true",
        help="every stored raw callback of the window, not only the unparsed ones: a correction"
        " run (--dry-run or --apply)",
    )
    modes = again.add_mutually_exclusive_group()
    modes.add_argument("--dry-run", action="store_true", help="report what would change only")
    modes.add_argument(
        "--apply", action="store_true", help="with --all: correct it (resumes an unfinished run)"
    )
    again.add_argument("--since", type=_timestamp, help="with --all: received at or after T")
    again.add_argument("--until", type=_timestamp, help="with --all: received before T")
    again.add_argument(
        "--report",
        metavar="FILE",
        help="with --all: the detail as JSON lines (default: correction-<time>.jsonl here)",
    )
    again.add_argument(
        "--batch-size", type=int, default=100, help="raw callbacks per transaction (--all)"
    )

    erase = commands.add_parser(
        "erase",
        help="remove or anonymise every row holding a phone number (the right to erasure)",
    )
    erase.add_argument("--number", required=True, help="the number in E.164, e.g. +447700900001")

    demo = commands.add_parser(
        "demo", help="send one message per provider through a running hub and watch the reports"
    )
    demo.add_argument("--url", default="http://127.0.0.1:8080", help="the running hub")
    demo.add_argument("--seconds", type=float, default=8.0, help="how long to watch")
    demo.add_argument(
        "--failover",
        action="store_true",
        help="a route over swift then carrierx: swift goes down, the messages move on",
    )
    demo.add_argument(
        "--key",
        default=os.environ.get("SMS_RECEIVER_API_KEY"),
        help="an API key with the send scope (default: SMS_RECEIVER_API_KEY)",
    )

    offline = commands.add_parser(
        "normalize", help="run a normaliser on one payload offline, print events as JSON lines"
    )
    offline.add_argument("--provider", required=True, choices=sorted(registry))
    offline.add_argument("--method", default="POST", choices=["GET", "POST"])
    offline.add_argument("--query", default="", help="query string, e.g. 'a=1&b=2'")
    offline.add_argument(
        "--header", action="append", default=[], metavar="'Name: value'", help="repeatable"
    )
    offline.add_argument(
        "--received-at",
        type=_timestamp,
        help="receipt time given to the normaliser, ISO 8601 (default: now)",
    )
    offline.add_argument("file", nargs="?", help="body file, or - for stdin (default: empty)")
    return parser


def add_tenant_commands(commands: Any, registry: Registry) -> None:
    group = commands.add_parser(
        "tenants", help="tenants: create, list, enable, disable, set; their numbers"
    )
    actions = group.add_subparsers(dest="tenants_command", required=True)

    def limits(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--provider",
            action="append",
            choices=sorted(registry),
            help="repeatable: the providers it may send through (default: every configured one)",
        )
        parser.add_argument(
            "--send-rate", type=float, help="send requests a second (SEND_RATE_PER_S)"
        )
        parser.add_argument("--send-burst", type=int, help="send requests at once (SEND_BURST)")
        parser.add_argument(
            "--daily-recipients", type=int, help="recipients a UTC day (SEND_DAILY_RECIPIENTS)"
        )
        parser.add_argument(
            "--help-reply", help="the answer to a HELP or INFO reply (default: none)"
        )

    create = actions.add_parser("create", help="a new tenant, enabled")
    create.add_argument("name", help=tenants.NAME_RULE)
    limits(create)
    actions.add_parser("list", help="every tenant with its settings, numbers and keys")
    for verb, meaning in (
        ("disable", "its keys are refused, its subscriptions and held messages wait"),
        ("enable", "its keys work again, its subscriptions and held messages go on"),
    ):
        action = actions.add_parser(verb, help=meaning)
        action.add_argument("name")
    change = actions.add_parser("set", help="change a tenant's providers or send limits")
    change.add_argument("name")
    limits(change)
    change.add_argument(
        "--all-providers", action="store_true", help="it may send through every provider again"
    )
    change.add_argument(
        "--no-help-reply", action="store_true", help="a HELP reply gets no answer again"
    )
    numbers = actions.add_parser("numbers", help="the numbers and sender ids a tenant owns")
    number_actions = numbers.add_subparsers(dest="numbers_command", required=True)
    for verb, meaning in (
        ("add", "replies to this number are the tenant's (a number has one tenant at most)"),
        ("remove", "the number is the tenant's no longer"),
    ):
        action = number_actions.add_parser(verb, help=meaning)
        action.add_argument("name")
        action.add_argument("number", help="E.164 (+447700900001) or a sender id")
    listed = number_actions.add_parser("list", help="the tenant's numbers")
    listed.add_argument("name")


def add_route_commands(commands: Any, registry: Registry) -> None:
    group = commands.add_parser(
        "routes", help="send routes: list, import and export (TOML, for version control)"
    )
    actions = group.add_subparsers(dest="routes_command", required=True)
    actions.add_parser("list", help="every route in the order they are tried")
    load = actions.add_parser(
        "import", help="the routes become exactly the file's (all or nothing), each change kept"
    )
    load.add_argument("file", help="a TOML file of [[route]] tables, or - for stdin")
    load.add_argument("--dry-run", action="store_true", help="check and show, change nothing")
    dump = actions.add_parser("export", help="the routes as a TOML file that import reads back")
    dump.add_argument("file", nargs="?", default="-", help="where to write (default: stdout)")


def add_opt_out_commands(commands: Any) -> None:
    group = commands.add_parser(
        "opt-outs", help="the opt-out list: import and export (CSV, to and from other systems)"
    )
    actions = group.add_subparsers(dest="opt_outs_command", required=True)
    load = actions.add_parser(
        "import", help="adds the file's entries (all or nothing: bad lines are named)"
    )
    load.add_argument("file", help="CSV with a header: number[,tenant][,sender]; - for stdin")
    load.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="for lines without a tenant (default: default)"
    )
    dump = actions.add_parser("export", help="every entry that still has its number, as CSV")
    dump.add_argument("file", nargs="?", default="-", help="where to write (default: stdout)")


def add_sandbox_commands(commands: Any, registry: Registry) -> None:
    group = commands.add_parser(
        "sandbox", help="break a simulated provider of a running `serve --sandbox`"
    )
    actions = group.add_subparsers(dest="sandbox_command", required=True)
    change = actions.add_parser("set", help="down, slow, throttled, lossy, or normal again")
    change.add_argument("provider", choices=sorted(registry))
    change.add_argument("mode", choices=["normal", "down", "slow", "throttled", "lossy"])
    change.add_argument("--country", help="ISO 3166 alpha-2: only for numbers of that country")
    change.add_argument("--delay", type=float, default=30.0, help="slow: seconds before reports")
    change.add_argument(
        "--loss-share", type=float, default=1.0, help="lossy: share of recipients lost (0-1]"
    )
    change.add_argument("--loss", choices=["undelivered", "silent"], default="undelivered")
    actions.add_parser("show", help="each simulated provider's mode and what it took")
    for action in actions.choices.values():
        action.add_argument("--url", default="http://127.0.0.1:8080", help="the hub's URL")
        action.add_argument("--key", help="an operator API key (when API_AUTH is on)")


def main(argv: Sequence[str] | None = None, registry: Registry = DEFAULT_REGISTRY) -> int:
    args = build_parser(registry).parse_args(argv)
    if args.command == "normalize":
        return normalize_command(args, registry)
    if args.command == "sandbox":
        return asyncio.run(sandbox_command(args))
    settings = settings_at_start(registry)
    if args.command == "serve":
        if args.sandbox:
            settings = settings.model_copy(update={"sandbox": True})
        if args.no_migrate:
            settings = settings.model_copy(update={"migrate_on_start": False})
        return serve_command(settings, args.host, args.port, registry)
    dsn, _server = resolve_dsn(settings)
    if args.command == "migrate":
        return asyncio.run(migrate_command(settings, dsn))
    if args.command == "keys":
        return asyncio.run(keys_command(settings, dsn, args))
    if args.command == "tenants":
        return asyncio.run(tenants_command(settings, dsn, args, registry))
    if args.command == "routes":
        return asyncio.run(routes_command(settings, dsn, args, registry))
    if args.command == "opt-outs":
        return asyncio.run(opt_outs_command(settings, dsn, args))
    if args.command == "worker":
        return asyncio.run(worker_command(settings, dsn, registry))
    if args.command == "erase":
        return asyncio.run(erase_command(settings, dsn, args.number))
    if args.command == "demo":
        if args.failover:
            return asyncio.run(run_failover_demo(args.url, api_key=args.key))
        return asyncio.run(run_demo(args.url, dsn, args.seconds, api_key=args.key))
    if args.all:
        return _correction_run(args, settings, dsn, registry)
    if args.apply or args.since or args.until or args.report:
        print("--apply, --since, --until and --report go with --all", file=sys.stderr)
        return 2
    return asyncio.run(
        reprocess_command(
            dsn,
            registry,
            args.provider,
            args.dry_run,
            settings.regions(),
            session_settings(settings),
        )
    )


def settings_at_start(registry: Registry) -> Settings:
    """The settings from the environment, with logging set up; a setting for a provider the
    registry does not know (a typo that would leave the real one unchecked) stops the command
    (exit status 2), naming it."""
    settings = Settings()
    unknown = settings.unknown_providers(registry)
    if unknown:
        print(
            f"error: settings for unknown providers: {', '.join(unknown)}"
            f" (<PROVIDER>__<FIELD> variables; known: {', '.join(sorted(registry))})",
            file=sys.stderr,
        )
        raise SystemExit(2)
    short = settings.short_callback_tokens()
    if short:
        names = ", ".join(f"{name.upper()}__CALLBACK_TOKEN" for name in short)
        print(
            f"error: {names}: a callback token must be at least {MIN_TOKEN_LENGTH} characters"
            " (it is all that stands between a stranger and a forged report); make one with"
            " `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    configure_logging(settings.log_level, configured_secrets(settings))
    return settings


def serve_command(
    settings: Settings,
    host: str | None,
    port: int | None,
    registry: Registry,
    extend: Callable[[web.Application], None] | None = None,
) -> int:
    """Migrate, then serve until SIGTERM or SIGINT; `extend` adds to the app before it starts
    (the benchmark's reference routes, which the product never mounts)."""
    dsn, _server = resolve_dsn(settings)
    if settings.migrate_on_start:
        asyncio.run(migrate_command(settings, dsn, quiet=True))
    elif asyncio.run(schema_behind(settings, dsn)):
        return 2
    app = create_app(settings, dsn, registry)
    if extend is not None:
        extend(app)
    listen_host = host or settings.listen_host
    listen_port = port if port is not None else settings.listen_port
    log.info("serving", url=f"http://{listen_host}:{listen_port}")
    try:
        web.run_app(
            app,
            host=listen_host,
            port=listen_port,
            shutdown_timeout=settings.shutdown_timeout_s,
            keepalive_timeout=settings.http_idle_timeout_s,
            # A body left unread (a 408, a 413) is not waited for: the connection closes at once.
            lingering_time=0,
            access_log=None,
            print=None,
        )
    except SpoolInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


async def keys_command(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn)
    try:
        if args.keys_command == "create":
            tenant = None if args.operator else (args.tenant or DEFAULT_TENANT)
            if tenant is not None:
                found = await tenants.tenant(connection, tenant)
                if found is None:
                    print(
                        f"error: no tenant named {tenant!r} (`sms-receiver tenants list` shows"
                        " them; `tenants create NAME` makes one)",
                        file=sys.stderr,
                    )
                    return 1
                if not found.enabled:
                    print(
                        f"error: the tenant {tenant!r} is disabled: its keys would be refused"
                        f" (`sms-receiver tenants enable {tenant}` first)",
                        file=sys.stderr,
                    )
                    return 1
            key_id, secret = await create_key(connection, args.name, args.scope, tenant)
            whose = f"tenant {tenant}" if tenant is not None else "operator"
            print(f"key {key_id} ({', '.join(sorted(set(args.scope)))}; {whose}): {secret}")
            print("the secret is shown this once; only its hash is stored")
            return 0
        if args.keys_command == "list":
            for row in await list_keys(connection):
                state = f"revoked {row['revoked_at']:%Y-%m-%d}" if row["revoked_at"] else "active"
                whose = row["tenant"] or "(operator)"
                print(
                    f"{row['id']}  {row['prefix']}…  {','.join(row['scopes']):<16}"
                    f"  {whose:<16}  {state:<18}  {row['name']}"
                )
            return 0
        try:
            key_id = uuid.UUID(args.key_id)
        except ValueError:
            print(f"error: not a key id: {args.key_id}", file=sys.stderr)
            return 1
        if not await revoke_key(connection, key_id):
            print(f"error: no active key {key_id}", file=sys.stderr)
            return 1
        print(f"key {key_id} revoked")
        return 0
    finally:
        await connection.close()


async def tenants_command(
    settings: Settings, dsn: str, args: argparse.Namespace, registry: Registry
) -> int:
    """The tenants subcommands; a refusal (a bad name, an unknown tenant, a number another
    tenant owns) is one line on stderr and exit status 1."""
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn)
    try:
        return await _tenants(connection, args, registry)
    except TenantError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except ReceiverError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        await connection.close()


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if args.provider:
        given["providers"] = args.provider
    if getattr(args, "all_providers", False):
        given["providers"] = None
    if args.help_reply is not None:
        if not 1 <= len(args.help_reply) <= 640:
            raise TenantError("invalid_help_reply", "--help-reply is 1 to 640 characters")
        given["help_reply"] = args.help_reply
    if getattr(args, "no_help_reply", False):
        given["help_reply"] = None
    for option, field in (
        ("send_rate", "send_rate_per_s"),
        ("send_burst", "send_burst"),
        ("daily_recipients", "daily_recipients"),
    ):
        value = getattr(args, option)
        if value is not None:
            if (value <= 0 and field != "daily_recipients") or value < 0:
                raise TenantError("invalid_limit", f"--{option.replace('_', '-')} must be positive")
            given[field] = value
    return given


async def _tenants(
    connection: asyncpg.Connection, args: argparse.Namespace, registry: Registry
) -> int:
    command = args.tenants_command
    if command == "create":
        await tenants.create_tenant(
            connection, args.name, tenants.settings_of(_limits(args), sorted(registry))
        )
        print(f"tenant {args.name} created (enabled)")
        return 0
    if command == "list":
        rows = await tenants.list_tenants(connection)
        for row in rows:
            state = "enabled" if row["enabled"] else "disabled"
            providers = ",".join(row["providers"]) if row["providers"] is not None else "all"
            limits = "/".join(
                "-" if row[field] is None else f"{row[field]:g}"
                for field in ("send_rate_per_s", "send_burst", "daily_recipients")
            )
            print(
                f"{row['name']:<20} {state:<9} providers={providers:<24} limits={limits:<14}"
                f" keys={row['keys']:<3} numbers={','.join(row['numbers']) or '-'}"
            )
        return 0
    if command in ("enable", "disable"):
        changed = await tenants.update_tenant(
            connection, args.name, {"enabled": command == "enable"}
        )
        if changed is None:
            raise TenantError("not_found", f"no tenant named {args.name!r}")
        print(f"tenant {args.name} {command}d")
        return 0
    if command == "set":
        changes = tenants.settings_of(_limits(args), sorted(registry))
        if not changes:
            raise TenantError("nothing_to_set", "nothing to set: give --provider, --send-rate...")
        if await tenants.update_tenant(connection, args.name, changes) is None:
            raise TenantError("not_found", f"no tenant named {args.name!r}")
        print(f"tenant {args.name}: {', '.join(sorted(changes))} set")
        return 0
    if args.numbers_command == "list":
        if await tenants.tenant(connection, args.name) is None:
            raise TenantError("not_found", f"no tenant named {args.name!r}")
        for number in await tenants.numbers_of(connection, args.name):
            print(number)
        return 0
    number = owned_number(typed_e164(args.number) or args.number.strip())
    if args.numbers_command == "add":
        await tenants.add_number(connection, args.name, number)
        print(f"{number} is the tenant {args.name}'s")
        return 0
    if not await tenants.remove_number(connection, args.name, number):
        raise TenantError("not_found", f"{number} is not a number of the tenant {args.name!r}")
    print(f"{number} is the tenant {args.name}'s no longer")
    return 0


async def routes_command(
    settings: Settings, dsn: str, args: argparse.Namespace, registry: Registry
) -> int:
    """The routes subcommands; a bad file is every problem on stderr (route and field) and
    exit status 1, with nothing changed."""
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn)
    try:
        command = args.routes_command
        if command == "list":
            for row in await routes.list_routes(connection):
                spec = routes.route_of(row).spec
                match = spec.match.model_dump(exclude_none=True) or "any"
                state = "" if spec.enabled else " (disabled)"
                print(
                    f"{row['position']:>5} {row['name']:<20} {spec.choose:<9}"
                    f" {','.join(spec.providers):<30} match={match}{state}"
                )
            return 0
        if command == "export":
            text = routes_toml(await routes.list_routes(connection))
            if args.file == "-":
                sys.stdout.write(text)
            else:
                await asyncio.to_thread(Path(args.file).write_text, text)
                print(f"routes written to {args.file}", file=sys.stderr)
            return 0
        source = await asyncio.to_thread(
            sys.stdin.read if args.file == "-" else Path(args.file).read_text
        )
        try:
            wanted = read_routes(source, registry.keys())
        except RoutesFileError as error:
            for problem in error.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        if args.dry_run:
            present = {row["name"] for row in await routes.list_routes(connection)}
            for name, _spec in wanted:
                print(f"{'keep or update' if name in present else 'create'} {name}")
            for name in sorted(present - {name for name, _ in wanted}):
                print(f"delete {name}")
            return 0
        done = await routes.replace_all(connection, wanted, who=f"cli ({getpass.getuser()})")
        for action in ("create", "update", "delete", "unchanged"):
            if done[action]:
                print(f"{action}: {', '.join(done[action])}")
        return 0
    finally:
        await connection.close()


async def opt_outs_command(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    """opt-outs import|export; a bad file is every problem on stderr (by line) and exit 1, with
    nothing stored."""
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn, server_settings=session_settings(settings))
    try:
        if args.opt_outs_command == "export":
            rows, erased = await export_rows(connection)
            text = entries_csv(rows)
            if args.file == "-":
                sys.stdout.write(text)
            else:
                await asyncio.to_thread(Path(args.file).write_text, text)
            print(
                f"{len(rows)} entries exported; {erased} erased ones stay (kept by hash alone)",
                file=sys.stderr,
            )
            return 0
        source = await asyncio.to_thread(
            sys.stdin.read if args.file == "-" else Path(args.file).read_text
        )
        names = set(await tenants.tenant_names(connection))
        try:
            entries = read_entries(source, names, args.tenant)
        except OptOutFileError as error:
            for problem in error.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        added = await import_entries(connection, entries)
        print(f"{added} entries added ({len(entries) - added} were on the list already)")
        return 0
    finally:
        await connection.close()


async def sandbox_command(args: argparse.Namespace) -> int:
    """Asks a running `serve --sandbox` to break a simulated provider (or shows them)."""
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    base = args.url.rstrip("/")
    async with aiohttp.ClientSession(headers=headers) as session:
        if args.sandbox_command == "show":
            request = session.get(f"{base}/v1/sandbox/providers")
        else:
            trouble: dict[str, Any] = {"mode": args.mode, "country": args.country}
            if args.mode == "slow":
                trouble["report_delay_s"] = args.delay
            if args.mode == "lossy":
                trouble |= {"loss_share": args.loss_share, "loss": args.loss}
            request = session.put(f"{base}/v1/sandbox/providers/{args.provider}", json=trouble)
        try:
            async with request as answer:
                body = await answer.json(content_type=None)
        except aiohttp.ClientError as error:
            print(f"error: cannot reach the hub at {base}: {error}", file=sys.stderr)
            return 1
    if answer.status >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        print(f"error: {answer.status} {message}", file=sys.stderr)
        return 1
    for provider in body.get("data", [body]):
        where = f" ({provider['country']})" if provider["country"] else ""
        print(
            f"{provider['name']:<12} {provider['mode']}{where:<6} took {provider['sent']}"
            f" lost {provider['lost']}"
        )
    return 0


async def schema_behind(settings: Settings, dsn: str) -> bool:
    """Whether the database lacks migrations this version needs (said on stderr): a process
    that does not migrate must not run on a schema it does not know."""
    await wait_for_database(dsn, settings.db_connect_retry_s)
    # A deploy step may be migrating at this moment: waited for as long as for the database.
    deadline = time.monotonic() + settings.db_connect_retry_s
    while True:
        connection = await asyncpg.connect(dsn)
        try:
            pending = await pending_migrations(connection, migrations_dir(settings.migrations_dir))
        finally:
            await connection.close()
        if not pending or time.monotonic() >= deadline:
            break
        log.info("waiting_for_migrations", pending=pending)
        await asyncio.sleep(1.0)
    if pending:
        print(
            f"error: the database lacks {len(pending)} migration(s) of this version"
            f" ({', '.join(pending)}): run `sms-receiver migrate` with a role that may change"
            " the schema, then start again",
            file=sys.stderr,
        )
    return bool(pending)


async def worker_command(settings: Settings, dsn: str, registry: Registry) -> int:
    """The dispatcher, the silence sweep, the held sends and the upkeep (partitions,
    retention), without the HTTP server, until SIGTERM or SIGINT. It never migrates: the
    database must be up to date."""
    if await schema_behind(settings, dsn):
        return 2
    db = await open_database(dsn, settings)
    await check_key(db, settings)
    signal = Signal()
    http = aiohttp.ClientSession(headers={"User-Agent": "sms-receiver/0.1"})
    context = AppContext(
        settings=settings,
        registry=registry,
        expected_migrations=frozenset(),
        db=db,
        http=http,
        signal=signal,
        read_db=db,
    )
    dispatcher = Dispatcher(db, settings, signal)
    sweep = SilenceSweep(db, settings, signal)
    held = Scheduler(context)
    watch = HealthWatch(db, settings, signal)
    upkeep = Upkeep(db, settings)
    loop = asyncio.get_running_loop()

    async def stop() -> None:
        await upkeep.stop()
        await watch.stop()
        await held.stop()
        await sweep.stop()
        await dispatcher.stop()

    for number in (signal_module.SIGTERM, signal_module.SIGINT):
        loop.add_signal_handler(number, lambda: loop.create_task(stop()))
    try:
        async with signal.connected(db, dsn):
            await asyncio.gather(
                dispatcher.run(), sweep.run(), held.run(), watch.run(), upkeep.run()
            )
    finally:
        await http.close()
        await db.close()
    return 0


async def migrate_command(settings: Settings, dsn: str, *, quiet: bool = False) -> int:
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn)
    try:
        applied = await apply_migrations(connection, migrations_dir(settings.migrations_dir))
    finally:
        await connection.close()
    if not quiet:
        print("applied: " + ", ".join(applied) if applied else "migrations up to date")
    return 0


async def erase_command(settings: Settings, dsn: str, number: str) -> int:
    """Erases the number and prints what it touched, a line per kind of row."""
    try:
        spellings(number)
    except NotANumber as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    await wait_for_database(dsn, settings.db_connect_retry_s)
    connection = await asyncpg.connect(dsn)
    try:
        erased = await erase(connection, number)
    finally:
        await connection.close()
    for what, count in sorted(erased.counts.items()):
        print(f"{what}: {count}")
    print(f"erased: {sum(erased.counts.values())} rows" if erased.counts else "nothing held it")
    log.info("number_erased", rows=erased.counts)  # the number itself is not logged
    return 0


async def reprocess_command(
    dsn: str,
    registry: Registry,
    provider: str | None,
    dry_run: bool,
    regions: Mapping[str, str] | None = None,
    server_settings: dict[str, str] | None = None,
) -> int:
    connection = await asyncpg.connect(dsn, server_settings=server_settings)
    try:
        report = await reprocess(
            connection, registry, provider=provider, dry_run=dry_run, emit=print, regions=regions
        )
    finally:
        await connection.close()
    verb = "would normalise" if dry_run else "normalised"
    print(
        f"{report.examined} unparsed examined: {verb} {report.normalised} "
        f"({report.new_events} new events), {report.still_unparsed} still unparsed"
    )
    return 0


def normalize_command(args: argparse.Namespace, registry: Registry) -> int:
    provider = registry[args.provider]
    try:
        body = _read_body(args.file)
        headers = dict(_split_header(line) for line in args.header)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    request = CallbackRequest(
        method=args.method,
        path=f"/callbacks/{args.provider}",
        query=args.query,
        headers=headers,
        body=body,
    )
    try:
        events = provider.parse_callback(request, args.received_at or datetime.now(UTC))
    except ParseError as error:
        print(f"error: cannot parse: {error}", file=sys.stderr)
        return 1
    for event in events:
        print(json.dumps(event.to_json(), ensure_ascii=False))
    return 0


def _correction_run(
    args: argparse.Namespace, settings: Settings, dsn: str, registry: Registry
) -> int:
    if not (args.dry_run or args.apply):
        print("reprocess --all needs --dry-run (look first) or --apply", file=sys.stderr)
        return 2
    for name, moment in (("--since", args.since), ("--until", args.until)):
        if moment is not None and not EARLIEST <= moment <= datetime.now(UTC):
            print(f"{name} must be between 1970 and now", file=sys.stderr)
            return 2
    if args.since and args.until and args.since >= args.until:
        print("--since must be before --until", file=sys.stderr)
        return 2
    if not 1 <= args.batch_size <= 10_000:
        print("--batch-size: 1 to 10000", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    request = RunRequest(
        provider=args.provider,
        since=args.since,
        until=args.until,
        mode=APPLY if args.apply else DRY_RUN,
        report=args.report or f"correction-{stamp}.jsonl",
        batch_size=args.batch_size,
    )
    with open(request.report or os.devnull, "a", encoding="utf-8") as report:
        return asyncio.run(
            reprocess_all(dsn, registry, settings, request, session_settings(settings), report)
        )


def _timestamp(text: str) -> datetime:
    moment = parse_timestamp(text)
    if moment is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}")
    return moment


def _read_body(file: str | None) -> bytes:
    if file is None:
        return b""
    if file == "-":
        return sys.stdin.buffer.read()
    return Path(file).read_bytes()


def _split_header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"header must look like 'Name: value': {line!r}")
    return name.strip(), value.strip()


def run() -> Any:  # pragma: no cover - console entry point
    sys.exit(main())
