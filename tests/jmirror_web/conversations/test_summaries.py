"""Summarising stored packets into conversations and names: what a simulated session
gives, incrementally, and never twice."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError

from jmirror_web.conversations import summaries
from jmirror_web.conversations.models import (
    Conversation,
    ObservedName,
    SessionSummary,
    SummaryProgress,
)
from jmirror_web.intercepts.models import CaptureFile, Session
from receiver.names import NAME_KINDS
from tests.jmirror_web.conversations.stored_session import (
    CLIENT,
    T0,
    TLS_SERVER,
    WEB,
    row_time,
    store_packets,
    subscriber_traffic,
    tcp,
)

pytestmark = pytest.mark.django_db
MS = 1_000_000


def conversations(session: Session) -> dict[tuple[Any, ...], Conversation]:
    return {
        (c.protocol, c.address_a, c.port_a, c.address_b, c.port_b): c
        for c in Conversation.objects.filter(session=session)
    }


def names(session: Session) -> dict[tuple[str, str, str], int]:
    return {
        (n.kind, n.name, n.address): n.count for n in ObservedName.objects.filter(session=session)
    }


def counts(session: Session) -> list[tuple[Any, ...]]:
    return sorted(
        (key, c.packets_ab, c.bytes_ab, c.packets_ba, c.bytes_ba, c.tcp_state, c.first_seen)
        for key, c in conversations(session).items()
    )


def test_a_session_gives_its_flows_each_way_with_tcp_state_and_its_names(
    session: Session, data_dir: Path
) -> None:
    packets = subscriber_traffic()
    store_packets(data_dir, session, packets)
    done, finished = summaries.summarise(10)
    assert (done, finished) == (len(packets) + 1, True)

    found = conversations(session)
    # The PPP control packet is no conversation of addresses.
    assert set(found) == {
        (17, CLIENT, 53124, "198.51.100.53", 53),
        (6, CLIENT, 40000, TLS_SERVER, 443),
        (6, CLIENT, 40001, WEB, 80),
    }
    dns = found[(17, CLIENT, 53124, "198.51.100.53", 53)]
    assert (dns.packets_ab, dns.bytes_ab) == (1, len(packets[0]))
    assert (dns.packets_ba, dns.bytes_ba) == (1, len(packets[1]))
    assert dns.tcp_state == ""
    assert (dns.first_seen, dns.last_seen) == (row_time(T0), row_time(T0 + MS))
    tls = found[(6, CLIENT, 40000, TLS_SERVER, 443)]
    assert (tls.packets_ab, tls.packets_ba) == (4, 2)
    assert tls.bytes_ab == sum(len(p) for p in packets[2:8]) - len(packets[3]) - len(packets[7])
    assert tls.tcp_state == "closed (FIN)"
    assert found[(6, CLIENT, 40001, WEB, 80)].tcp_state == "reset"

    assert names(session) == {
        ("dns-query", "www.example.com", "198.51.100.53"): 1,
        ("dns-answer", "www.example.com", "93.184.216.34"): 1,
        ("tls-sni", "secure.example.net", TLS_SERVER): 1,
        ("http-host", "www.example.org", WEB): 1,
    }


def test_summarising_again_counts_nothing_twice(session: Session, data_dir: Path) -> None:
    store_packets(data_dir, session, subscriber_traffic())
    summaries.summarise(10)
    before = counts(session), names(session)
    assert summaries.summarise(10) == (0, True)
    assert (counts(session), names(session)) == before


def test_packets_counted_later_are_added_to_the_same_conversations(
    session: Session, data_dir: Path
) -> None:
    """A growing file: its row counts more packets at each bookkeeping write. Summarised
    in three slices, it gives what one pass over all of it gives."""
    packets = subscriber_traffic()
    whole = store_packets(data_dir, session, packets, ppp=False)[0]
    summaries.summarise(10)
    expected = counts(session), names(session)
    Conversation.objects.all().delete()
    ObservedName.objects.all().delete()
    SummaryProgress.objects.all().delete()

    for seen in (3, 7, len(packets)):
        CaptureFile.objects.filter(pk=whole.pk).update(packets=seen)
        summaries.summarise(10)
        assert SummaryProgress.objects.get(capture=whole).packets == seen
    assert (counts(session), names(session)) == expected


@pytest.mark.parametrize("few", [400, 0], ids=["rows-of-its-addresses", "every-row"])
def test_a_slice_at_a_time_keeps_a_conversation_oriented_as_first_seen(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """The server's answer, summarised in a later batch than the client's SYN, is counted
    as B to A of the same row (found among the rows of the slice's addresses, or among
    all of the session's when the slice has too many addresses to name)."""
    monkeypatch.setattr(summaries, "_FEW", few)
    store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    summaries.summarise(10, batch_packets=3)
    tls = conversations(session)[(6, CLIENT, 40000, TLS_SERVER, 443)]
    assert (tls.packets_ab, tls.packets_ba, tls.tcp_state) == (4, 2, "closed (FIN)")


def test_a_purged_file_is_not_summarised(session: Session, data_dir: Path) -> None:
    [capture] = store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    CaptureFile.objects.filter(pk=capture.pk).update(purged_at=row_time(T0))
    assert summaries.summarise(10) == (0, True)
    assert not Conversation.objects.exists()


def test_a_missing_file_is_noted_and_retried_only_later_or_when_it_counts_more(
    session: Session, data_dir: Path
) -> None:
    [capture] = store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    capture.on_disk().unlink()
    assert summaries.summarise(10) == (0, True)
    progress = SummaryProgress.objects.get(capture=capture)
    assert (progress.packets, progress.failed_at) == (0, capture.packets)
    assert "missing or cannot be read" in progress.error
    assert summaries.summarise(10) == (0, True)
    # Tried again some time later (uploaded to the store meanwhile, say), at the same count.
    from datetime import UTC, datetime

    SummaryProgress.objects.filter(pk=progress.pk).update(
        updated_at=datetime.now(UTC) - summaries.RETRY_UNREADABLE * 2
    )
    assert summaries.summarise(10) == (0, True)
    progress.refresh_from_db()
    assert progress.updated_at > datetime.now(UTC) - summaries.RETRY_UNREADABLE


def test_conversations_over_the_cap_are_counted_not_stored(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(summaries, "MAX_CONVERSATIONS", 2)
    monkeypatch.setattr(summaries, "MAX_NAMES", 1)
    store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    summaries.summarise(10)
    assert Conversation.objects.filter(session=session).count() == 2
    assert ObservedName.objects.filter(session=session).count() == 1
    left = SessionSummary.objects.get(session=session)
    assert (left.conversations_left_out, left.names_left_out) == (1, 3)


def test_fragments_and_icmp_are_flows_without_ports(session: Session, data_dir: Path) -> None:
    from receiver import traffic

    fragments = [bytes(each) for each in traffic.ipv4_udp_fragments()]
    store_packets(
        data_dir,
        session,
        [bytes(traffic.ipv4_icmp().packet), *fragments, tcp(CLIENT, WEB, 1, 2, "A")],
        ppp=False,
    )
    summaries.summarise(10)
    found = conversations(session)
    assert (1, traffic.SUBSCRIBER, 0, traffic.SERVER, 0) in found
    assert (6, CLIENT, 1, WEB, 2) in found
    assert found[(6, CLIENT, 1, WEB, 2)].tcp_state == "started before capture"
    assert sum(c.packets_ab + c.packets_ba for c in found.values()) == 2 + len(fragments)


def test_every_kind_the_reader_gives_is_a_kind_of_name_row() -> None:
    assert set(ObservedName.Kind.values) == set(NAME_KINDS)


def test_the_command_once_summarises_what_is_stored_and_exits(
    session: Session, data_dir: Path
) -> None:
    store_packets(data_dir, session, subscriber_traffic())
    out = io.StringIO()
    call_command("summarise", "--once", stdout=out)
    assert out.getvalue() == f"summarised {len(subscriber_traffic()) + 1} packets\n"
    assert Conversation.objects.filter(session=session).count() == 3


def test_a_crash_while_adding_a_slice_leaves_nothing_of_it_to_count_twice(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    summaries.summarise(10)
    expected = counts(session), names(session)
    Conversation.objects.all().delete()
    ObservedName.objects.all().delete()
    SummaryProgress.objects.all().delete()

    def crash(session_id: int, found: Any) -> int:
        raise OperationalError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr(summaries, "_store_names", crash)
        with pytest.raises(OperationalError):
            summaries.summarise(10)
    assert SummaryProgress.objects.get().packets == 0
    assert not Conversation.objects.exists()
    summaries.summarise(10)
    assert (counts(session), names(session)) == expected


def test_a_slice_another_summariser_took_is_not_added_again(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [capture] = store_packets(data_dir, session, subscriber_traffic(), ppp=False)
    read = summaries.read_batch

    def raced(*args: Any) -> summaries.Batch:
        batch = read(*args)
        SummaryProgress.objects.filter(capture=capture).update(packets=capture.packets)
        return batch

    monkeypatch.setattr(summaries, "read_batch", raced)
    assert summaries.summarise(10) == (0, True)
    assert not Conversation.objects.exists()


def test_a_file_that_breaks_the_summariser_is_set_aside_and_the_others_go_on(
    session: Session, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, ppp = store_packets(data_dir, session, subscriber_traffic())
    read = summaries.read_batch

    def broken(capture: CaptureFile, *args: Any) -> summaries.Batch:
        if capture.pk == raw.pk:
            raise ValueError("a bug")
        return read(capture, *args)

    monkeypatch.setattr(summaries, "read_batch", broken)
    assert summaries.summarise(10) == (1, True)
    failed = SummaryProgress.objects.get(capture=raw)
    assert (failed.packets, failed.failed_at) == (0, raw.packets)
    assert failed.error == "internal error: ValueError('a bug')"
    assert SummaryProgress.objects.get(capture=ppp).packets == 1
