"""The receiver's counters in bulk: every session's counters and every file's row of a
write in a few statements, for :meth:`SessionManager.add_counts` and
:meth:`CaptureFileManager.record` (:mod:`jmirror_web.intercepts.models`).

A receiver writes the counters of thousands of sessions a second; row by row through the
ORM that holds the interpreter (which the receive loop shares) for seconds. Here each
write is INSERT ... ON CONFLICT DO UPDATE over a VALUES list per chunk of rows (SQLite),
or a binary COPY into a temporary table and one INSERT ... SELECT (PostgreSQL). Table and
column names come from the model through ``quote_name``; every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from django.db import NotSupportedError, connections, models, transaction


class SessionCounts(NamedTuple):
    """Counters a receiver adds to one session's row (see SessionManager.add_counts)."""

    router_id: int
    mid: int
    sid: int
    intercept_id: int | None
    first_seen: datetime
    last_seen: datetime
    packets: int
    bytes: int
    stored_packets: int


SessionIdentity = tuple[int, int, int]  # router id, mid, sid


class TrafficCounts(NamedTuple):
    """Packets and bytes a receiver adds to one session's minute (TrafficMinute)."""

    session_id: int
    minute: datetime  # its start, UTC
    packets: int
    bytes: int


class FileCounts(NamedTuple):
    """What a receiver knows of one of its pcap files (see CaptureFileManager.record)."""

    path: str
    session_id: int
    first_packet: datetime
    last_packet: datetime
    packets: int
    bytes: int
    sha256: str
    closed: bool
    node: str = ""  # the capture host (settings.NODE_NAME)
    closed_at: datetime | None = None  # when it closed; None while open


# Bind parameters per statement on SQLite when the library cannot tell its own limit
# (SQLITE_LIMIT_VARIABLE_NUMBER: 999 before 3.32, 32,766 since), and at most this many on
# any database: a statement of a few thousand rows is already past the point where more
# rows per statement save time, and a smaller one keeps each lock short.
_SQLITE_DEFAULT_PARAMS: Final = 999
_MAX_PARAMS: Final = 9_000


def _params_per_statement(alias: str) -> int:
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return _MAX_PARAMS
    connection.ensure_connection()
    getlimit = getattr(connection.connection, "getlimit", None)  # Python 3.11+
    if getlimit is None:
        return _SQLITE_DEFAULT_PARAMS
    import sqlite3

    return int(min(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), _MAX_PARAMS))


def _upsert_support(alias: str) -> None:
    """INSERT ... ON CONFLICT (columns) DO UPDATE ... RETURNING: PostgreSQL, SQLite 3.35+."""
    features = connections[alias].features
    if not (
        features.supports_update_conflicts_with_target and features.can_return_rows_from_bulk_insert
    ):
        raise NotSupportedError(
            "the receiver's counters need INSERT ... ON CONFLICT ... RETURNING "
            "(PostgreSQL, or SQLite 3.35 or later)"
        )


def _column_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise TypeError(f"{model._meta.label}.{name} is not a column")
    return field


# Columns whose Python values the database drivers take as they are (Django's own
# preparation of them is a no-op for the values the receiver writes): converting tens of
# thousands of values a second through get_db_prep_save costs the interpreter time the
# receive loop needs.
_PLAIN_TYPES: Final = frozenset(
    {
        "BigIntegerField",
        "BooleanField",
        "CharField",
        "IntegerField",
        "PositiveBigIntegerField",
        "PositiveIntegerField",
    }
)


def _to_database(field: models.Field[Any, Any], alias: str) -> Any:
    """A function turning a value of ``field`` into the parameter the database takes."""
    connection = connections[alias]
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    kind = target.get_internal_type()
    if kind in _PLAIN_TYPES or (kind == "DateTimeField" and connection.vendor == "postgresql"):
        # psycopg takes an aware datetime as it is (Django's adaptation returns it as is).
        return lambda value: value
    if kind == "DateTimeField" and connection.vendor == "sqlite":
        # What DatabaseOperations.adapt_datetimefield_value does on SQLite (naive text in
        # the connection's time zone), without its checks per value.
        zone = connection.timezone

        def text(value: datetime | None) -> str | None:
            if value is None:
                return None
            return str(value.astimezone(zone).replace(tzinfo=None))

        return text
    return lambda value: field.get_db_prep_save(value, connection)


def _insert_by_copy(
    connection: Any,
    table: str,
    fields: Sequence[models.Field[Any, Any]],
    rows: Sequence[Sequence[Any]],
    fixed: Sequence[tuple[models.Field[Any, Any], Any]],
    constants: list[Any],
    conflict: str,
) -> list[tuple[Any, ...]]:
    quote = connection.ops.quote_name
    columns = [quote(str(field.column)) for field in fields]
    types = [field.db_type(connection) or "" for field in fields]
    # A table of this session, emptied at each commit; made again on a new connection.
    staging = quote(f"jmirror_staging_{table.strip(chr(34))}")
    definition = ", ".join(f"{name} {kind}" for name, kind in zip(columns, types, strict=True))
    scalars = "".join(f", CAST(%s AS {field.db_type(connection)})" for field, _ in fixed)
    every = ", ".join(columns + [quote(str(field.column)) for field, _ in fixed])
    returned: list[tuple[Any, ...]] = []
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ({definition}) ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {staging}")
        with cursor.copy(
            f"COPY {staging} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            # Type names without their modifier (varchar(500) is varchar to psycopg).
            copy.set_types([kind.split("(")[0] for kind in types])
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {table} ({every}) SELECT {', '.join(columns)}{scalars} "  # noqa: S608
            f"FROM {staging} {conflict}",
            constants,
        )
        if cursor.description is not None:
            returned.extend(cursor.fetchall())
    return returned


def _insert(
    model: type[models.Model],
    alias: str,
    fields: Sequence[models.Field[Any, Any]],
    rows: Sequence[Sequence[Any]],
    fixed: Sequence[tuple[models.Field[Any, Any], Any]],
    conflict: str,
) -> list[tuple[Any, ...]]:
    """INSERT ``rows`` (values in the order of ``fields``; ``fixed`` gives the same value
    to every row) followed by ``conflict`` (ON CONFLICT ... and maybe RETURNING), in as
    few statements as the database takes; returns what RETURNING gave, if any.

    SQLite gets a VALUES list per chunk of rows (its limit on parameters per statement);
    PostgreSQL a binary COPY into a temporary table, then one INSERT ... SELECT: binding
    a VALUES list of tens of thousands of parameters, or arrays of them, costs psycopg
    ten times more (measured: 370 against 30 ms for 10,000 rows of 8 columns), in this
    process, than the server takes to run the statement."""
    connection = connections[alias]
    quote = connection.ops.quote_name
    # Table and column names come from the model through quote_name, types from the
    # fields; every value is a parameter.
    table = quote(model._meta.db_table)
    constants = [field.get_db_prep_save(value, connection) for field, value in fixed]
    if connection.vendor == "postgresql":
        return _insert_by_copy(connection, table, fields, rows, fixed, constants, conflict)
    every = [*fields, *(field for field, _ in fixed)]
    names = ", ".join(quote(str(field.column)) for field in every)
    converters = [_to_database(field, alias) for field in fields]
    returned: list[tuple[Any, ...]] = []
    head = f"INSERT INTO {table} ({names}) "
    with connection.cursor() as cursor:
        row_sql = "(" + ", ".join(["%s"] * len(every)) + ")"
        chunk = max(1, _params_per_statement(alias) // len(every))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            params: list[Any] = []
            for row in part:
                params.extend(
                    convert(value) for convert, value in zip(converters, row, strict=True)
                )
                params.extend(constants)
            cursor.execute(f"{head}VALUES {', '.join([row_sql] * len(part))} {conflict}", params)
            if cursor.description is not None:
                returned.extend(cursor.fetchall())
    return returned


def add_session_counts(
    model: type[models.Model], alias: str, rows: Sequence[SessionCounts]
) -> dict[SessionIdentity, int]:
    """What :meth:`SessionManager.add_counts` does, on ``model``'s table in database
    ``alias``: one INSERT ... ON CONFLICT DO UPDATE per chunk of rows, rows of the same
    session merged first."""
    merged: dict[SessionIdentity, SessionCounts] = {}
    for row in rows:
        identity = (row.router_id, row.mid, row.sid)
        known = merged.get(identity)
        if known is not None:
            # One row per session per statement: PostgreSQL refuses to update a row
            # twice in one INSERT ... ON CONFLICT.
            row = row._replace(
                first_seen=min(known.first_seen, row.first_seen),
                last_seen=max(known.last_seen, row.last_seen),
                packets=known.packets + row.packets,
                bytes=known.bytes + row.bytes,
                stored_packets=known.stored_packets + row.stored_packets,
            )
        merged[identity] = row
    if not merged:
        return {}
    _upsert_support(alias)
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = model._meta
    table = quote(meta.db_table)
    fields = [_column_field(model, name) for name in SessionCounts._fields]
    column = {
        name: quote(str(field.column))
        for name, field in zip(SessionCounts._fields, fields, strict=True)
    }

    def added(name: str) -> str:
        return f"{column[name]} = {table}.{column[name]} + excluded.{column[name]}"

    def extent(name: str, outward: str) -> str:
        # CASE rather than LEAST/MIN: the same text on both databases.
        mine, theirs = f"{table}.{column[name]}", f"excluded.{column[name]}"
        return f"{column[name]} = CASE WHEN {theirs} {outward} {mine} THEN {theirs} ELSE {mine} END"

    conflict = (
        f"ON CONFLICT ({column['router_id']}, {column['mid']}, {column['sid']}) DO UPDATE SET "
        + ", ".join(
            [
                f"{column['intercept_id']} = excluded.{column['intercept_id']}",
                extent("first_seen", "<"),
                extent("last_seen", ">"),
                added("packets"),
                added("bytes"),
                added("stored_packets"),
            ]
        )
        + f" RETURNING {quote(meta.pk.column)}, {column['router_id']}, {column['mid']}, "
        f"{column['sid']}"
    )
    ids: dict[SessionIdentity, int] = {}
    returned = _insert(model, alias, fields, list(merged.values()), (), conflict)
    for pk, router_id, mid, sid in returned:
        ids[(router_id, mid, sid)] = pk
    return ids


def record_files(model: type[models.Model], alias: str, rows: Sequence[FileCounts]) -> None:
    """What :meth:`CaptureFileManager.record` does, on ``model``'s table in database
    ``alias``: INSERT ... ON CONFLICT (path) DO UPDATE, unless the row is closed and the
    new one is not."""
    by_path: dict[str, FileCounts] = {}
    for row in rows:
        known = by_path.get(row.path)
        if known is None or row.closed or not known.closed:
            by_path[row.path] = row
    if not by_path:
        return
    _upsert_support(alias)
    connection = connections[alias]
    quote = connection.ops.quote_name
    meta = model._meta
    table = quote(meta.db_table)
    given = {name: _column_field(model, name) for name in FileCounts._fields}
    # Every other column gets its default (created_at: now): a new row is complete.
    now = datetime.now(UTC)
    others: list[tuple[models.Field[Any, Any], Any]] = []
    for field in meta.concrete_fields:
        if field.primary_key or field in given.values():
            continue
        if getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
            others.append((field, now))
        elif field.has_default() or (field.empty_strings_allowed and not field.null):
            # Django's own default for a field without one: "" for text.
            others.append((field, field.get_default()))
        elif field.null:
            others.append((field, None))
        else:
            raise NotSupportedError(f"{meta.label}.{field.name} has no value to insert")
    column = {field.name: quote(str(field.column)) for field in given.values()}
    updated = (
        "session",
        "first_packet",
        "last_packet",
        "packets",
        "bytes",
        "sha256",
        "closed",
        "node",
        "closed_at",
    )
    conflict = (
        f"ON CONFLICT ({column['path']}) DO UPDATE SET "
        + ", ".join(f"{column[name]} = excluded.{column[name]}" for name in updated)
        + f" WHERE NOT {table}.{column['closed']} OR excluded.{column['closed']}"
    )
    _insert(model, alias, list(given.values()), list(by_path.values()), others, conflict)


def add_traffic(model: type[models.Model], alias: str, rows: Sequence[TrafficCounts]) -> None:
    """What :meth:`TrafficMinuteManager.add` does, on ``model``'s table in database
    ``alias``: one INSERT ... ON CONFLICT DO UPDATE adding to the minute's counts per
    chunk of rows, rows of the same minute merged first."""
    merged: dict[tuple[int, datetime], TrafficCounts] = {}
    for row in rows:
        key = (row.session_id, row.minute)
        known = merged.get(key)
        if known is not None:
            row = row._replace(packets=known.packets + row.packets, bytes=known.bytes + row.bytes)
        merged[key] = row
    if not merged:
        return
    _upsert_support(alias)
    quote = connections[alias].ops.quote_name
    table = quote(model._meta.db_table)
    fields = [_column_field(model, name) for name in ("session", "minute", "packets", "bytes")]
    session, minute, packets, count = (quote(str(field.column)) for field in fields)
    conflict = (
        f"ON CONFLICT ({session}, {minute}) DO UPDATE SET "
        f"{packets} = {table}.{packets} + excluded.{packets}, "
        f"{count} = {table}.{count} + excluded.{count}"
    )
    _insert(model, alias, fields, list(merged.values()), (), conflict)
