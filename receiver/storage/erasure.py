"""Erasing a phone number (a person's right to erasure): every row that holds it is removed or
anonymised, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.storage.pool import Connection

# What replaces the number where a row is kept for what it says of others (a message's other
# recipients, the provider's account of its traffic).
ERASED = "[erased]"


@dataclass(slots=True)
class Erased:
    """Rows touched, by table and what was done to them."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, result: str | int) -> None:
        count = result if isinstance(result, int) else int(result.split()[-1])
        if count:
            self.counts[what] = self.counts.get(what, 0) + count


async def erase_number(connection: Connection, number: str, forms: list[str]) -> Erased:
    """Removes or anonymises every row holding `number` (E.164); `forms` are the spellings it
    may have in a provider's raw payload (with and without `+`, national)."""
    erased = Erased()
    async with connection.transaction():
        # Found through the indexes: its recipients (by number), their events (by recipient),
        # its replies (inbound events, a partial index), and their raw callbacks (by id).
        recipients = await connection.fetch(
            # the index on the number holds the recipients of messages only: the others (reports
            # for ids the hub never sent) are found among those without a message
            "SELECT id, message_id FROM message_recipients"
            " WHERE recipient = $1 AND message_id IS NOT NULL"
            " UNION ALL"
            " SELECT id, message_id FROM message_recipients"
            " WHERE recipient = $1 AND message_id IS NULL",
            number,
        )
        await connection.execute(
            "SELECT 1 FROM message_recipients WHERE id = ANY($1::bigint[]) FOR UPDATE",
            [row["id"] for row in recipients],
        )
        recipient_ids = [row["id"] for row in recipients]
        messages = list({row["message_id"] for row in recipients if row["message_id"]})
        raw_ids = [
            row["raw_id"]
            for row in await connection.fetch(
                """
                SELECT raw_id FROM events WHERE recipient_id = ANY($1::bigint[])
                UNION
                SELECT raw_id FROM events WHERE type = 'message.inbound' AND sender = $2
                """,
                recipient_ids,
                number,
            )
            if row["raw_id"] is not None
        ]
        # Raw callbacks go whole (bodies are not kept in part), with the unread ones that
        # mention the number in any spelling.
        erased.add(
            "raw_callbacks deleted",
            await connection.execute(
                """
                DELETE FROM raw_callbacks r
                WHERE r.id = ANY($1::uuid[])
                   OR (r.outcome = 'unparsed' AND EXISTS (
                       SELECT 1 FROM unnest($2::text[]) AS f(form)
                       WHERE position(convert_to(f.form, 'UTF8') IN r.body) > 0
                          OR position(f.form IN r.query) > 0))
                """,
                raw_ids,
                forms,
            ),
        )
        # Replies from the number are its holder's own words: removed.
        erased.add(
            "inbound events deleted",
            await connection.execute(
                "DELETE FROM events WHERE type = 'message.inbound' AND sender = $1", number
            ),
        )
        erased.add(
            "events anonymised",
            await connection.execute(
                "UPDATE events SET recipient = $2, text = NULL"
                " WHERE recipient_id = ANY($1::bigint[])",
                recipient_ids,
                ERASED,
            ),
        )
        erased.add(
            "recipients anonymised",
            await connection.execute(
                "UPDATE message_recipients SET recipient = $2 || ':' || id, updated_at = now()"
                " WHERE id = ANY($1::bigint[])",
                recipient_ids,
                ERASED,
            ),
        )
        # The number leaves each message's stored request; a message sent to it alone loses
        # its text too, and one still held by the hub is not sent.
        erased.add(
            "messages anonymised",
            await connection.execute(
                """
                UPDATE messages m SET
                    request = CASE WHEN m.request ? 'to' THEN jsonb_set(m.request, '{to}',
                        coalesce((SELECT jsonb_agg(t) FROM jsonb_array_elements(m.request->'to') t
                                  WHERE t <> to_jsonb($2::text)), '[]'::jsonb))
                        ELSE m.request END - CASE WHEN alone THEN 'body' ELSE '' END,
                    body = CASE WHEN alone THEN NULL ELSE m.body END,
                    cancelled_at = CASE WHEN alone AND m.dispatch_at IS NOT NULL
                                        THEN now() ELSE m.cancelled_at END,
                    dispatch_at = CASE WHEN alone THEN NULL ELSE m.dispatch_at END
                FROM (SELECT mm.id, NOT EXISTS (
                          SELECT 1 FROM message_recipients r
                          WHERE r.message_id = mm.id AND r.recipient NOT LIKE $3 || ':%')
                          AS alone
                      FROM messages mm WHERE mm.id = ANY($1::uuid[])) AS s
                WHERE m.id = s.id
                """,
                messages,
                number,
                ERASED,
            ),
        )
        # The person stays opted out without the number: the entry keeps its keyed hash.
        erased.add(
            "opt-outs kept by their hash alone",
            await connection.execute(
                "UPDATE opt_outs SET number = NULL"
                " WHERE number_hash = opt_out_hash($1) AND number IS NOT NULL",
                number,
            ),
        )
        erased.add(
            "opt-out events anonymised",
            await connection.execute(
                "UPDATE events SET sender = $2"
                " WHERE type IN ('contact.opted_out', 'contact.opted_in') AND sender = $1",
                number,
                ERASED,
            ),
        )
        # A stored answer to a send (Idempotency-Key) names its recipients.
        erased.add(
            "idempotency answers deleted",
            await connection.execute(
                "DELETE FROM idempotency_keys WHERE position($1 IN response_body::text) > 0",
                number,
            ),
        )
    return erased
