"""Signed checkpoints: the key file, `manage.py audit checkpoint(s)|public-key`, and
`manage.py verify_audit` finding a rewritten or truncated chain with them."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from jmirror_web.audit.checkpoints import (
    SIGNED_PREFIX,
    SignedCheckpoint,
    SigningKeyError,
    checkpoint_if_moved,
    key_id,
    run_periodic_checkpoints,
    signing_key,
    start_periodic_checkpoints,
    write_checkpoint,
)
from jmirror_web.audit.models import AuditCheckpoint, AuditEvent, append_event
from tests.jmirror_web.audit.tampering import owner_cursor, rewrite_chain

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(*args: str) -> CommandError:
    with pytest.raises(CommandError) as error:
        run(*args)
    return error.value


def add_events(count: int) -> list[AuditEvent]:
    return [append_event(action="test.event", details={"n": n}) for n in range(count)]


def signed(checkpoint: AuditCheckpoint) -> SignedCheckpoint:
    return SignedCheckpoint.of(AuditCheckpoint.objects.get(pk=checkpoint.pk))


@pytest.fixture
def two_checkpoints() -> tuple[list[AuditEvent], AuditCheckpoint, AuditCheckpoint]:
    """Events 1-3, a checkpoint at 3, events 4-6, a checkpoint at 6, events 7-8."""
    events = add_events(3)
    first = write_checkpoint()
    events += add_events(3)
    second = write_checkpoint()
    events += add_events(2)
    assert first is not None
    assert second is not None
    return events, first, second


# The key file ---------------------------------------------------------------------


def test_the_key_is_made_on_first_use_with_mode_0600_and_kept(audit_key_file: Path) -> None:
    key = signing_key()

    assert stat.S_IMODE(audit_key_file.stat().st_mode) == 0o600
    assert audit_key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key_id(signing_key().public_key()) == key_id(key.public_key())
    assert [path.name for path in audit_key_file.parent.iterdir()] == [audit_key_file.name]


def test_a_key_made_by_another_process_meanwhile_is_kept(audit_key_file: Path) -> None:
    from jmirror_web.audit import checkpoints

    theirs = Ed25519PrivateKey.generate()
    audit_key_file.write_bytes(
        theirs.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    audit_key_file.chmod(0o600)

    checkpoints._create_key_file(audit_key_file)  # lost the race: must not replace it

    assert key_id(signing_key().public_key()) == key_id(theirs.public_key())


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (b"not a key\n", 0o600, "is not an unencrypted Ed25519 private key in PEM (PKCS #8)"),
        (b"A" * 20_000, 0o600, "is not an unencrypted Ed25519 private key in PEM (PKCS #8)"),
        (None, 0o644, "is open to other users (mode 0644); chmod 600 it"),
        (None, 0o000, "cannot be read: Permission denied"),
    ],
)
def test_a_bad_key_file_is_a_clear_error_and_never_replaced(
    audit_key_file: Path, content: bytes | None, mode: int, problem: str
) -> None:
    add_events(1)
    if content is None:
        signing_key()
        content = audit_key_file.read_bytes()
    else:
        audit_key_file.write_bytes(content)
    audit_key_file.chmod(mode)
    if mode == 0 and os.geteuid() == 0:
        pytest.skip("root reads any file")

    error = refused("audit", "checkpoint")

    assert error.returncode == 2
    assert str(error) == f"the audit signing key {str(audit_key_file)!r} {problem}"
    audit_key_file.chmod(0o600)
    assert audit_key_file.read_bytes() == content
    assert not AuditCheckpoint.objects.exists()


def test_a_key_file_that_cannot_be_made_is_a_clear_error(settings, tmp_path: Path) -> None:
    settings.JMIRROR_AUDIT_KEY_FILE = tmp_path / "missing" / "key"

    with pytest.raises(SigningKeyError) as error:
        signing_key()

    assert str(error.value) == (
        f"the audit signing key {str(tmp_path / 'missing' / 'key')!r} cannot be created: "
        "No such file or directory; make its directory writable or set JMIRROR_AUDIT_KEY_FILE"
    )


def test_a_directory_in_place_of_the_key_is_refused(audit_key_file: Path) -> None:
    audit_key_file.mkdir()

    with pytest.raises(SigningKeyError, match=r"is not a file|cannot be read"):
        signing_key()


# audit checkpoint / checkpoints / public-key --------------------------------------


def test_a_checkpoint_signs_the_newest_event_and_prints_it_as_a_json_line() -> None:
    events = add_events(3)
    public_pem = run("audit", "public-key")

    line = json.loads(run("audit", "checkpoint"))

    stored = AuditCheckpoint.objects.get()
    assert line == {
        "checkpoint": stored.pk,
        "sequence": events[-1].pk,
        "hash": events[-1].hash,
        "time": line["time"],
        "key_id": line["key_id"],
        "signature": stored.signature,
    }
    # What an off-host verifier does with the line and the public key alone.
    public = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(public, Ed25519PublicKey)
    content = {name: line[name] for name in ("hash", "key_id", "sequence", "time")}
    public.verify(
        base64.b64decode(line["signature"]),
        SIGNED_PREFIX + json.dumps(content, sort_keys=True, separators=(",", ":")).encode(),
    )
    assert line["key_id"] == key_id(public)


def test_a_checkpoint_of_an_empty_log_is_refused() -> None:
    error = refused("audit", "checkpoint")

    assert (error.returncode, str(error)) == (1, "the audit log is empty: there is nothing to sign")
    assert not AuditCheckpoint.objects.exists()


def test_checkpoints_export_as_json_lines_since_a_number(two_checkpoints) -> None:
    _, first, second = two_checkpoints

    every = [json.loads(line) for line in run("audit", "checkpoints").splitlines()]
    later = [
        json.loads(line)
        for line in run("audit", "checkpoints", "--since", str(first.pk)).splitlines()
    ]

    assert [line["checkpoint"] for line in every] == [first.pk, second.pk]
    assert every[1] == json.loads(signed(second).json_line())
    assert later == [every[1]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["checkpoints", "--since", "yesterday"],
            "--since: 'yesterday' is not a checkpoint number (e.g. 41)",
        ),
        (["checkpoints", "--since", "-1"], "--since: '-1' is not a checkpoint number (e.g. 41)"),
        (["checkpoint", "--json"], "--json is for listing events, not for checkpoint"),
        (["public-key", "--since", "3"], "--since is not for public-key"),
    ],
)
def test_audit_refuses_options_that_do_not_fit(args: list[str], message: str) -> None:
    error = refused("audit", *args)

    assert (error.returncode, str(error)) == (2, message)


def test_the_database_refuses_to_change_or_remove_a_checkpoint() -> None:
    add_events(1)
    checkpoint = write_checkpoint()
    assert checkpoint is not None
    for statement in (
        "UPDATE audit_auditcheckpoint SET sequence = 0 WHERE id = %s",
        "DELETE FROM audit_auditcheckpoint WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="audit checkpoints are append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [checkpoint.pk])
    with pytest.raises(PermissionError):
        AuditCheckpoint.objects.all().delete()

    assert AuditCheckpoint.objects.get().sequence == checkpoint.sequence


# verify_audit against the checkpoints ---------------------------------------------


def test_verify_audit_names_the_newest_checkpoint_of_an_intact_log(two_checkpoints) -> None:
    events, _, second = two_checkpoints

    assert run("verify_audit") == (
        f"audit log intact: {len(events)} events, last hash {events[-1].hash}; "
        f"2 checkpoints agree, the newest at event #{events[5].pk} ({signed(second).time})\n"
    )


def test_verify_audit_says_when_there_are_no_checkpoints() -> None:
    events = add_events(2)

    assert run("verify_audit") == (
        f"audit log intact: 2 events, last hash {events[-1].hash}; no checkpoints, so a "
        "rewritten or truncated log would pass (see `manage.py audit checkpoint`)\n"
    )


def test_verify_audit_finds_a_chain_recomputed_after_an_edit(two_checkpoints) -> None:
    events, first, second = two_checkpoints
    with owner_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET details = %s WHERE id = %s", ['{"n": 99}', events[4].pk]
        )
    rewrite_chain()
    rewritten = AuditEvent.objects.get(pk=events[5].pk).hash

    error = refused("verify_audit")

    # The first checkpoint still agrees: the edit is after it. The second names it.
    assert error.returncode == 1
    assert str(error) == (
        f"audit log disagrees with {signed(second)}: event #{events[5].pk} has hash "
        f"{rewritten[:16]}..., the checkpoint {events[5].hash[:16]}...: the chain was rewritten"
    )
    assert str(signed(second)) == (
        f"checkpoint #{second.pk} (event #{events[5].pk}, {signed(second).time})"
    )
    assert signed(first).sequence == events[2].pk


def test_verify_audit_finds_the_newest_events_deleted(two_checkpoints) -> None:
    events, _, second = two_checkpoints
    with owner_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id >= %s", [events[4].pk])

    error = refused("verify_audit")

    assert error.returncode == 1
    assert str(error) == (
        f"audit log disagrees with {signed(second)}: the log ends at event #{events[3].pk}: "
        "its newest events were deleted (truncated)"
    )


@pytest.mark.parametrize("deleted", [3, 5], ids=["inside", "the checkpoint's own event"])
def test_verify_audit_finds_events_deleted_inside_a_checkpoints_range(
    two_checkpoints, deleted: int
) -> None:
    events, _, second = two_checkpoints
    with owner_cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [events[deleted].pk])
    rewrite_chain()

    error = refused("verify_audit")

    assert error.returncode == 1
    assert str(error).startswith(f"audit log disagrees with {signed(second)}: event #")
    if deleted == 5:
        assert str(error).endswith(
            f"event #{events[5].pk} is missing: events it covers were deleted"
        )
    else:
        assert str(error).endswith("the chain was rewritten")


def test_verify_audit_finds_a_deleted_checkpoint_in_the_exported_file(
    two_checkpoints, tmp_path: Path
) -> None:
    events, first, second = two_checkpoints
    kept = tmp_path / "checkpoints.jsonl"
    kept.write_text(run("audit", "checkpoints"))
    # Cover the tracks: events of the second checkpoint's range deleted, the chain
    # recomputed, that checkpoint deleted.
    with owner_cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE id > %s AND id <= %s",
            [events[2].pk, events[5].pk],
        )
        cursor.execute("DELETE FROM audit_auditcheckpoint WHERE id = %s", [second.pk])
    rewrite_chain()
    gone = SignedCheckpoint.from_json(kept.read_text().splitlines()[1])

    # The database alone now agrees with itself: that is why checkpoints go off the host.
    assert run("verify_audit").endswith(
        f"; 1 checkpoint agrees, the newest at event #{events[2].pk} ({signed(first).time})\n"
    )
    error = refused("verify_audit", "--checkpoints", str(kept))

    assert error.returncode == 1
    assert str(error) == (
        f"audit log disagrees with {gone}: it is in {kept} but not in the database: it was deleted"
    )
    assert str(gone) == f"checkpoint #{second.pk} (event #{events[5].pk}, {gone.time})"


def test_verify_audit_off_host_needs_only_the_public_key_and_the_file(
    two_checkpoints, tmp_path: Path, settings
) -> None:
    events, _, _ = two_checkpoints
    public = tmp_path / "audit.pub"
    public.write_text(run("audit", "public-key"))
    kept = tmp_path / "checkpoints.jsonl"
    kept.write_text(run("audit", "checkpoints"))
    settings.JMIRROR_AUDIT_KEY_FILE = tmp_path / "not-on-this-host"

    assert run("verify_audit", "--checkpoints", str(kept), "--public-key", str(public)) == (
        run("verify_audit", "--public-key", str(public))
    )
    assert run("verify_audit", "--public-key", str(public)).startswith(
        f"audit log intact: {len(events)} events"
    )
    assert not (tmp_path / "not-on-this-host").exists()
    error = refused("verify_audit")
    assert str(error).endswith("and no public key was given to check it")


def test_verify_audit_finds_a_checkpoint_not_signed_with_the_key(two_checkpoints) -> None:
    events, _, _ = two_checkpoints
    other = Ed25519PrivateKey.generate()
    forged = SignedCheckpoint(
        number=0,
        sequence=events[-1].pk,
        head_hash=events[-1].hash,
        time="2026-12-01T00:00:00Z",
        key_id=key_id(other.public_key()),
        signature="",
    )
    AuditCheckpoint.objects.create(
        created_at="2026-12-01T00:00:00Z",
        sequence=forged.sequence,
        head_hash=forged.head_hash,
        key_id=forged.key_id,
        signature=base64.b64encode(other.sign(forged.message())).decode(),
    )

    error = refused("verify_audit")

    assert str(error).endswith(
        f"signed with key {forged.key_id}, not with {key_id(signing_key().public_key())}"
    )


def test_verify_audit_finds_an_altered_checkpoint(two_checkpoints) -> None:
    _, first, _ = two_checkpoints
    with owner_cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditcheckpoint SET created_at = %s WHERE id = %s",
            ["2020-01-01T00:00:00Z", first.pk],
        )

    error = refused("verify_audit")

    assert str(error) == (
        f"audit log disagrees with {signed(first)}: its signature does not verify: the "
        "checkpoint was forged or altered"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}\n", "line 1: not a checkpoint ('checkpoint' is missing or not an integer)"),
        ("\nnot json\n", "line 2: not a checkpoint (not JSON)"),
        ("[1]\n", "line 1: not a checkpoint (not a JSON object)"),
        ("x" * 5000 + "\n", "line 1: longer than 4096 characters"),
    ],
)
def test_verify_audit_refuses_a_file_that_is_not_checkpoints(
    tmp_path: Path, content: str, message: str
) -> None:
    kept = tmp_path / "checkpoints.jsonl"
    kept.write_text(content)

    error = refused("verify_audit", "--checkpoints", str(kept))

    assert (error.returncode, str(error)) == (2, f"{kept}, {message}")


def test_verify_audit_refuses_a_public_key_that_is_not_one(tmp_path: Path) -> None:
    public = tmp_path / "audit.pub"
    public.write_text("not a key")

    error = refused("verify_audit", "--public-key", str(public))

    assert (error.returncode, str(error)) == (2, f"{public} is not an Ed25519 public key in PEM")


# Periodic checkpoints -------------------------------------------------------------


def test_a_periodic_checkpoint_is_written_only_when_the_log_moved() -> None:
    assert checkpoint_if_moved() is None  # empty log
    events = add_events(2)
    first = checkpoint_if_moved()
    assert first is not None
    assert first.sequence == events[-1].pk
    assert checkpoint_if_moved() is None
    events += add_events(1)
    second = checkpoint_if_moved()
    assert second is not None
    assert second.sequence == events[-1].pk


def test_periodic_checkpoints_are_off_at_zero_minutes(settings) -> None:
    settings.JMIRROR_AUDIT_CHECKPOINT_MINUTES = 0

    assert start_periodic_checkpoints() is None


@pytest.mark.django_db(transaction=True)
def test_the_periodic_writer_logs_a_bad_key_and_goes_on(
    audit_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_events(1)
    audit_key_file.write_text("not a key")
    audit_key_file.chmod(0o600)
    stop = threading.Event()
    writer = threading.Thread(target=run_periodic_checkpoints, args=(stop, 0.02, 0.0))

    with caplog.at_level(logging.INFO, logger="jmirror_web.audit.checkpoints"):
        writer.start()
        deadline = time.monotonic() + 10
        while "not an unencrypted Ed25519" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        audit_key_file.unlink()  # a good key made on its next round
        while not AuditCheckpoint.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        writer.join(timeout=10)

    assert not writer.is_alive()
    assert (
        f"audit checkpoint not written: the audit signing key {str(audit_key_file)!r} is not"
        in (caplog.text)
    )
    checkpoint = AuditCheckpoint.objects.get()  # one: the log did not move after it
    assert f"audit checkpoint {signed(checkpoint).json_line()}" in caplog.text
