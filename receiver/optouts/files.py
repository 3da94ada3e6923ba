"""The opt-out list in CSV files (`sms-receiver opt-outs import|export`), for moving lists in and
out of other systems: a header, then one entry a line: `number` (E.164), `tenant` (empty: the
import's --tenant), `sender` (the number or sender id it opted out of; empty: the whole tenant).
An import checks every line first and stores all or nothing, in one transaction."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import asyncpg

from normalizers.base import number_facts, to_e164
from receiver.http.fields import is_sender_id
from receiver.storage.pool import Connection

COLUMNS = ("number", "tenant", "sender", "source", "created_at")
# A sender id as providers carry it: up to 11 letters, digits and spaces, one letter at least.


@dataclass(frozen=True, slots=True)
class Entry:
    number: str
    tenant: str
    sender: str | None


class OptOutFileError(Exception):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def read_entries(text: str, tenants: Collection[str], default_tenant: str) -> list[Entry]:
    """Every line checked; an OptOutFileError lists each bad one by its line number."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "number" not in reader.fieldnames:
        raise OptOutFileError(["line 1: a header with at least `number` is needed"])
    problems: list[str] = []
    entries: list[Entry] = []
    for row in reader:
        line = reader.line_num
        number = to_e164((row.get("number") or "").strip())
        if number is None or not number.startswith("+") or not number_facts(number)[0]:
            problems.append(f"line {line}: number: not a possible E.164 number")
            continue
        tenant = (row.get("tenant") or "").strip() or default_tenant
        if tenant not in tenants:
            problems.append(f"line {line}: tenant: no tenant named {tenant!r}")
            continue
        given = (row.get("sender") or "").strip()
        sender: str | None = None
        if given:
            e164 = to_e164(given)
            if e164 is not None and e164.startswith("+") and number_facts(e164)[0]:
                sender = e164
            elif is_sender_id(given):
                sender = given
            else:
                problems.append(f"line {line}: sender: neither an E.164 number nor a sender id")
                continue
        entries.append(Entry(number, tenant, sender))
    if problems:
        raise OptOutFileError(problems)
    return entries


async def import_entries(connection: Connection, entries: Sequence[Entry]) -> int:
    """Stores the entries (source `import`) in one transaction; returns how many were new."""
    async with connection.transaction():
        await connection.execute(
            "CREATE TEMPORARY TABLE opt_out_import (number text, tenant text, sender text)"
            " ON COMMIT DROP"
        )
        await connection.copy_records_to_table(
            "opt_out_import", records=[(e.number, e.tenant, e.sender) for e in entries]
        )
        result = await connection.execute(
            """
            INSERT INTO opt_outs (tenant, number, number_hash, sender, source)
            SELECT i.tenant, i.number, hmac_with(p.inner_pad, p.outer_pad, i.number), i.sender,
                   'import'
            FROM opt_out_import i, opt_out_pads() AS p
            ON CONFLICT DO NOTHING
            """
        )
    return int(result.split()[-1])


async def export_rows(connection: Connection) -> tuple[list[asyncpg.Record], int]:
    """Every entry that still has its number, oldest first; and how many do not (erased: their
    hash cannot leave the hub)."""
    rows = await connection.fetch(
        "SELECT number, tenant, sender, source, created_at FROM opt_outs"
        " WHERE number IS NOT NULL ORDER BY created_at, id"
    )
    erased: int = await connection.fetchval("SELECT count(*) FROM opt_outs WHERE number IS NULL")
    return rows, erased


def entries_csv(rows: Sequence[asyncpg.Record]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row["number"],
                row["tenant"] or "",
                row["sender"] or "",
                row["source"],
                row["created_at"].isoformat(),
            ]
        )
    return out.getvalue()
