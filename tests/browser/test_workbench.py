"""The analyst's workbench after traffic stopped, in a real browser (Playwright driving
Debian's Chromium): the stored packet list of a session paged and filtered through its
form, one numbering on the list, the API, the packet page and the whole-session export
downloaded through the page's form, and the styled 404 and 403 pages.

One product process for the module (``manage.py serve``, as tests/browser/test_live_view.py
runs it: the session page opens the live websocket, which a plain WSGI live server would
refuse with a console error). The stored session is written by ``manage.py shell`` with
the receiver's own :class:`PcapStore`, as tests/jmirror_web/console/test_stored_packets.py
does: PPP control and PPP-framed DNS in one file, bare IP in another, rotated, their times
interleaved and the last two equal. No traffic is received.

Any console error or uncaught exception on a page fails the test. Screenshots of every
page visited go to test-artifacts/browser/workbench-*.png (not committed).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from receiver.pcap_reader import iter_frames
from tests.browser.conftest import needs_chromium
from tests.browser.test_live_view import ARTIFACTS, WAIT_MS
from tests.e2e_helpers import ServedProduct

pytestmark = [pytest.mark.browser, needs_chromium]

PASSWORD = "workbench test passphrase 43"
PAGE_SIZE = 25
ROUNDS = 29  # each one TCP/443 in the IP file and one DNS query in the PPP file
STORED = 1 + 2 * ROUNDS + 2  # and LCP first, LCP and IPv6 UDP last (the same nanosecond)
DNS_SERVER_PORT = 53
DNS_QUERIES = ROUNDS + 1  # the IPv6 UDP packet is one too
WEB_CLIENT = "203.0.113.7"

# Analyst A is assigned to case A, whose session holds the stored packets; case B's
# session exists for the 404. Prints the ids as JSON.
RECORDS = f"""
import json
from pathlib import Path
from django.conf import settings
from jmirror_web.intercepts.access import Role
from jmirror_web.intercepts.models import CaptureFile
from receiver import traffic
from receiver.store import LINKTYPE_PPP_HDLC, LINKTYPE_RAW, PcapStore, SessionKey
from tests.factories import assign, make_case, make_intercept, make_router, make_session, make_user
from tests.jmirror_web.exports.evidence import SECOND, moment, t0

analyst = make_user(Role.ANALYST, username="analyst-a")
analyst.set_password({PASSWORD!r})
analyst.save()
case = make_case(reference="WB-A", title="Workbench case A")
router = make_router(name="wb-router")
intercept = make_intercept(case, liid="WB-LIID-A", routers=[router])
assign(analyst, case)
other = make_session(make_intercept(make_case(reference="WB-B"), liid="WB-LIID-B"))

start = t0()
lcp = bytes(traffic.ppp_lcp().packet)
writes = [(start, lcp, LINKTYPE_PPP_HDLC)]
for k in range(1, {ROUNDS} + 1):
    web = bytes(traffic.ipv4_tcp(src={WEB_CLIENT!r}, dport=443).packet)
    dns = bytes(traffic.ipv4_udp(src="203.0.113.8", dport={DNS_SERVER_PORT}).packet)
    writes.append((start + k * SECOND, web, LINKTYPE_RAW))
    writes.append((start + k * SECOND + 500, b"\\xff\\x03\\x00\\x21" + dns, LINKTYPE_PPP_HDLC))
end = start + ({ROUNDS} + 1) * SECOND
writes.append((end, lcp, LINKTYPE_PPP_HDLC))
writes.append((end, bytes(traffic.ipv6_udp().packet), LINKTYPE_RAW))
assert len(writes) == {STORED}
store = PcapStore(settings.SESSIONS_DIR, rotate_seconds=10)
key = SessionKey(intercept.liid, router.address, intercept.intercept_id, 0x77)
for time_ns, data, linktype in writes:
    assert store.write(key, time_ns, data, linktype)
closed = store.close_all()
assert len(closed) > 4, closed
session = make_session(intercept, router=router, mid=intercept.intercept_id, sid=0x77,
    first_seen=moment(start), last_seen=moment(end), packets=len(writes),
    bytes=sum(len(data) for _t, data, _l in writes), stored_packets=len(writes))
for each in closed:
    CaptureFile.objects.create(session=session,
        path=str(Path(settings.SESSIONS_DIR).relative_to(settings.DATA_DIR) / each.path),
        first_packet=moment(each.first_ns), last_packet=moment(each.last_ns),
        packets=each.packets, bytes=each.bytes, sha256=each.sha256, closed=True)

# A second session: the simulator's subscriber browsing (DNS, HTTP, TLS with its server
# name), bare IP, summarised as the receiver's child would (conversations and names).
from receiver.management.commands.simulate import subscriber_traffic
from jmirror_web.conversations.summaries import summarise
browsing = [bytes(packet) for packet in subscriber_traffic("ip")]
key = SessionKey(intercept.liid, router.address, intercept.intercept_id, 0x78)
store = PcapStore(settings.SESSIONS_DIR)
for number, data in enumerate(browsing):
    assert store.write(key, start + number * SECOND // 100, data, LINKTYPE_RAW)
(closed,) = store.close_all()
talking = make_session(intercept, router=router, mid=intercept.intercept_id, sid=0x78,
    first_seen=moment(closed.first_ns), last_seen=moment(closed.last_ns),
    packets=len(browsing), bytes=sum(map(len, browsing)), stored_packets=len(browsing))
CaptureFile.objects.create(session=talking,
    path=str(Path(settings.SESSIONS_DIR).relative_to(settings.DATA_DIR) / closed.path),
    first_packet=moment(closed.first_ns), last_packet=moment(closed.last_ns),
    packets=closed.packets, bytes=closed.bytes, sha256=closed.sha256, closed=True)
done, finished = summarise(60)
assert finished and done >= len(browsing), (done, finished)
print(json.dumps({{"session": session.pk, "other": other.pk, "talking": talking.pk,
    "case": case.pk}}))
"""


@dataclass(frozen=True)
class World:
    product: ServedProduct
    session: int
    other: int
    talking: int  # the simulated browsing, summarised
    case: int

    @property
    def session_url(self) -> str:
        return f"{self.product.base}/sessions/{self.session}/"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    product = ServedProduct(tmp_path_factory.mktemp("workbench") / "data")
    try:
        product.start()
        ids = json.loads(product.shell(RECORDS).strip().splitlines()[-1])
        yield World(product, ids["session"], ids["other"], ids["talking"], ids["case"])
    finally:
        product.stop()
        print(product.read_output())


@pytest.fixture(scope="module")
def analyst(browser: Browser, world: World) -> Iterator[BrowserContext]:
    """Analyst A's browser, signed in once for the module."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(f"{world.product.base}/accounts/login/")
    page.fill("#id_username", "analyst-a")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{world.product.base}/")
    assert page.locator(".bar .who").inner_text() == "analyst-a"
    page.close()
    try:
        yield context
    finally:
        context.close()


class PageErrors:
    """Console errors and uncaught exceptions of every page opened in a context, except
    Chromium's report of the one status a page is expected to answer with (an error page's
    own 404 or 403 is logged as "Failed to load resource")."""

    def __init__(self, context: BrowserContext) -> None:
        self.messages: list[str] = []
        self.expected: dict[str, int] = {}  # page URL -> its expected error status
        context.on("page", self.watch)
        for page in context.pages:
            self.watch(page)

    def watch(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type != "error":
                return
            source = message.location.get("url") or "?"
            status = self.expected.get(source)
            if status is not None and message.text == (
                f"Failed to load resource: the server responded with a status of {status} "
                f"({'Not Found' if status == 404 else 'Forbidden'})"
            ):
                return
            self.messages.append(f"console error on {page.url} ({source}): {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.messages.append(f"{page.url}: {error}"))


@pytest.fixture
def errors(analyst: BrowserContext) -> Iterator[PageErrors]:
    collected = PageErrors(analyst)
    yield collected
    analyst.remove_listener("page", collected.watch)
    assert collected.messages == []


@pytest.fixture
def page(analyst: BrowserContext, errors: PageErrors) -> Iterator[Page]:
    opened = analyst.new_page()
    try:
        yield opened
    finally:
        opened.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"workbench-{name}.png"), full_page=True)


STORED_ROWS = "[data-stored-table] tbody tr[data-number]"
COLUMNS = ("number", "time", "src", "dst", "protocol", "sport", "dport", "length", "info")


def shown_rows(page: Page) -> list[dict[str, str]]:
    """The stored list's rows as the page shows them, by column; ``time`` is the
    ``datetime`` of the time cell (its text is the same)."""
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        STORED_ROWS,
        """(rows, columns) => rows.map(row => {
             const cells = [...row.querySelectorAll("td")].map(cell => cell.innerText.trim());
             const shown = Object.fromEntries(columns.map((name, i) => [name, cells[i] ?? ""]));
             const time = row.querySelector("time");
             shown.time = time ? time.getAttribute("datetime") : "";
             shown.timeText = time ? time.innerText : "";
             shown.dataNumber = row.dataset.number;
             const link = row.querySelector("td a");
             shown.href = link ? link.getAttribute("href") : "";
             return shown;
           })""",
        list(COLUMNS),
    )
    for row in rows:
        assert row["number"] == row["dataNumber"]
        assert row["timeText"] == row["time"]
    return rows


def numbers(page: Page) -> list[int]:
    return [int(row["number"]) for row in shown_rows(page)]


def summary(page: Page) -> str:
    return " ".join(page.locator("[data-stored-summary]").inner_text().split())


def api_rows(page: Page, world: World, **query: Any) -> dict[str, Any]:
    """GET /api/sessions/<id>/packets with the page's cookies."""
    answer = page.request.get(
        f"{world.product.base}/api/sessions/{world.session}/packets",
        params={"page_size": 500, **query},
    )
    assert answer.status == 200, answer.text()
    listed: dict[str, Any] = answer.json()
    return listed


def submit_filter(page: Page, **fields: str) -> None:
    """Fills the stored list's form (fields not given are emptied) and submits it."""
    form = page.locator("form[data-stored-filters]")
    for name in ("start", "end", "address", "port", "protocol", "info"):
        form.locator(f'input[name="{name}"]').fill(fields.get(name, ""))
    form.locator('select[name="page_size"]').select_option(fields.get("page_size", str(PAGE_SIZE)))
    with page.expect_navigation():
        form.locator("button[type=submit]").click()


def follow(page: Page, rel: str) -> None:
    with page.expect_navigation():
        page.click(f'#stored nav.pager a[rel="{rel}"]')


def test_stored_packets_are_paged_and_filtered_through_the_form(world: World, page: Page) -> None:
    page.goto(world.session_url)
    assert page.locator("#stored h2").inner_text() == "Stored packets"
    # The default page holds them all; the form asks for pages of 25.
    assert numbers(page) == list(range(1, STORED + 1))
    assert summary(page) == f"{STORED} stored packets · page 1 of 1"
    assert page.locator("#stored nav.pager a").count() == 0
    screenshot(page, "1-session")

    submit_filter(page)
    pages = math.ceil(STORED / PAGE_SIZE)
    assert f"page_size={PAGE_SIZE}" in page.url
    assert numbers(page) == list(range(1, PAGE_SIZE + 1))
    assert summary(page) == f"{STORED} stored packets · page 1 of {pages}"
    assert page.locator('#stored nav.pager a[rel="prev"]').count() == 0
    screenshot(page, "2-stored-page-1")
    follow(page, "next")
    assert numbers(page) == list(range(PAGE_SIZE + 1, 2 * PAGE_SIZE + 1))
    assert summary(page).endswith(f"page 2 of {pages}")
    follow(page, "last")
    assert numbers(page) == list(range((pages - 1) * PAGE_SIZE + 1, STORED + 1))
    assert summary(page).endswith(f"page {pages} of {pages}")
    assert page.locator('#stored nav.pager a[rel="next"]').count() == 0
    screenshot(page, "3-stored-last-page")
    follow(page, "prev")
    assert numbers(page)[0] == (pages - 2) * PAGE_SIZE + 1
    follow(page, "first")
    assert numbers(page) == list(range(1, PAGE_SIZE + 1))

    # A port: every row has it on one side, the same rows as the API's, pages keep it.
    submit_filter(page, port=str(DNS_SERVER_PORT))
    dns = api_rows(page, world, port=DNS_SERVER_PORT)["results"]
    assert len(dns) == DNS_QUERIES
    assert summary(page) == f"{DNS_QUERIES} of {STORED} stored packets match · page 1 of 2"
    assert page.locator('form[data-stored-filters] input[name="port"]').input_value() == "53"
    first_page = shown_rows(page)
    assert all(str(DNS_SERVER_PORT) in (row["sport"], row["dport"]) for row in first_page)
    screenshot(page, "4-filter-port")
    follow(page, "next")
    second_page = shown_rows(page)
    assert all(str(DNS_SERVER_PORT) in (row["sport"], row["dport"]) for row in second_page)
    assert [int(row["number"]) for row in first_page + second_page] == [
        row["number"] for row in dns
    ]
    assert "port=53" in page.url

    # An address: every row has it as source or destination.
    submit_filter(page, address=WEB_CLIENT, page_size="100")
    web = shown_rows(page)
    assert len(web) == ROUNDS
    assert all(WEB_CLIENT in (row["src"], row["dst"]) for row in web)
    assert [int(row["number"]) for row in web] == [
        row["number"] for row in api_rows(page, world, address=WEB_CLIENT)["results"]
    ]

    # A protocol: TCP rows only, and "link" for what is not IP (the PPP control packets).
    submit_filter(page, protocol="tcp", page_size="100")
    tcp = shown_rows(page)
    assert [row["number"] for row in tcp] == [row["number"] for row in web]
    assert {row["protocol"] for row in tcp} <= {"TCP", "TLS", "HTTP"}, tcp
    submit_filter(page, protocol="link", page_size="100")
    link = shown_rows(page)
    assert [row["protocol"] for row in link] == ["PPP LCP", "PPP LCP"]
    first_lcp, last_lcp = (int(row["number"]) for row in link)
    assert first_lcp == 1
    assert last_lcp in (STORED - 1, STORED)  # the same nanosecond as the last IPv6 packet
    screenshot(page, "5-filter-protocol")

    # A filter that cannot be served says why on the page, naming the field; no table.
    for field, value in (("port", "70000"), ("address", "10.0.0.300"), ("protocol", "quic")):
        submit_filter(page, **{field: value})
        error = page.locator(f'[data-stored-error][data-field-name="{field}"]')
        assert error.is_visible()
        assert error.inner_text().strip()
        assert page.locator("[data-stored-table]").count() == 0
        assert page.locator("h1").inner_text().startswith("Session 0x77 of WB-LIID-A")
        # What was typed stays in the form, to be corrected.
        typed = page.locator(f'form[data-stored-filters] input[name="{field}"]')
        assert typed.input_value() == value
    screenshot(page, "6-filter-error")

    # "clear" brings every packet back.
    with page.expect_navigation():
        page.click("form[data-stored-filters] a:text('clear')")
    assert numbers(page) == list(range(1, min(STORED, 100) + 1))

    # In a narrow window the list scrolls sideways in its own section: rows stay a line or
    # two high, not the info column squeezed to a few letters a line.
    row_heights = "rows => rows.map(row => row.getBoundingClientRect().height)"
    one_line = max(page.eval_on_selector_all(STORED_ROWS, row_heights))
    page.set_viewport_size({"width": 800, "height": 900})
    heights: list[float] = page.eval_on_selector_all(STORED_ROWS, row_heights)
    assert max(heights) < 3 * one_line, (one_line, heights)
    assert page.eval_on_selector("#stored", "section => section.scrollWidth > section.clientWidth")
    screenshot(page, "6b-narrow-window")
    page.set_viewport_size({"width": 1280, "height": 900})


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    return [(time_ns, frame) for _n, time_ns, _l, frame in iter_frames(io.BytesIO(data))]


def test_packet_n_is_the_same_on_the_list_the_api_the_packet_page_and_the_export(
    world: World, page: Page
) -> None:
    page.goto(world.session_url)

    # The whole session through the page's own download form, as pcapng.
    page.click("details[data-export] > summary")
    form = page.locator("details[data-export] form")
    form.locator('select[name="format"]').select_option("pcapng")
    screenshot(page, "7-export-form")
    with page.expect_download() as download_info:
        form.locator("button[type=submit]").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".pcapng"), download.suggested_filename
    frames = frames_of(Path(download.path()).read_bytes())
    assert len(frames) == STORED
    # The API's export of the session, with the same cookies: the same frames.
    exported = page.request.get(
        f"{world.product.base}/api/sessions/{world.session}/pcap", params={"format": "pcapng"}
    )
    assert exported.status == 200
    assert frames_of(exported.body()) == frames

    listed = api_rows(page, world)
    assert listed["count"] == STORED
    api = {row["number"]: row for row in listed["results"]}
    assert sorted(api) == list(range(1, STORED + 1))
    # The last two packets share a nanosecond, one in each file.
    assert frames[-1][0] == frames[-2][0]
    assert {api[STORED - 1]["protocol"], api[STORED]["protocol"]} == {"PPP LCP", "DNS"}

    # Every row of every page of the list is the API's row and the export's frame.
    shown: dict[int, dict[str, str]] = {}
    for number in range(1, math.ceil(STORED / PAGE_SIZE) + 1):
        page.goto(f"{world.session_url}?page_size={PAGE_SIZE}&page={number}")
        shown.update((int(row["number"]), row) for row in shown_rows(page))
    assert sorted(shown) == list(range(1, STORED + 1))
    for number, row in shown.items():
        time_ns, data = frames[number - 1]
        from_api = api[number]
        assert row["time"] == from_api["time"], number
        assert (row["protocol"], row["src"], row["dst"], row["info"]) == (
            from_api["protocol"],
            from_api["src"] or "",
            from_api["dst"] or "",
            from_api["info"],
        )
        assert row["length"] == str(from_api["length"]) == str(len(data))
        # The time to the nanosecond, as the export has it.
        assert row["time"] == ns_text(time_ns), number

    # The packet page of a few, through the list's links: the frame's time and length.
    for number in (1, 2, 3, PAGE_SIZE + 1, STORED - 1, STORED):
        time_ns, data = frames[number - 1]
        page.goto(world.product.base + shown[number]["href"])
        assert page.url == f"{world.product.base}/sessions/{world.session}/packets/{number}/"
        assert page.locator("h1").inner_text().startswith(f"Packet {number} ")
        facts = page.locator("table.packet-facts").inner_text()
        assert f"({time_ns} ns)" in facts, facts
        assert f"{len(data)} bytes" in facts, facts
        if number in (1, STORED):
            screenshot(page, f"8-packet-{number}")


def ns_text(time_ns: int) -> str:
    """A time in ns since the epoch as the list and the API write it (UTC, ISO 8601)."""
    seconds, fraction = divmod(time_ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def test_error_pages_are_the_consoles_with_its_navigation(
    world: World, page: Page, errors: PageErrors
) -> None:
    base = world.product.base
    cases = [
        ("9-404-other-case", f"{base}/sessions/{world.other}/", 404, "Not found"),
        ("9-404-no-packet", f"{world.session_url}packets/{STORED + 1}/", 404, "Not found"),
        ("9-403-health", f"{base}/health/", 403, "Not allowed"),
    ]
    for name, url, status, title in cases:
        errors.expected[url] = status
        response = page.goto(url)
        assert response is not None
        assert response.status == status, url
        assert page.locator("main h1").inner_text() == title
        assert page.title() == f"{title} · jmirror-web"
        # The console's bar: who is signed in and the navigation, styled.
        assert page.locator(".bar .who").inner_text() == "analyst-a"
        nav = page.locator('.bar nav[aria-label="main"] a')
        assert nav.all_inner_texts()[:2] == ["Dashboard", "Verify a file"]
        assert "Health" not in nav.all_inner_texts()
        assert page.locator(".bar").evaluate("bar => getComputedStyle(bar).display") == "flex"
        assert "WB-LIID-B" not in page.content()
        screenshot(page, name)
    with page.expect_navigation():
        page.click("main a:text('Back to the dashboard')")
    assert page.url == f"{base}/"
    # The API says no the same way, without the other case's data.
    refused = page.request.get(f"{base}/api/sessions/{world.other}/packets")
    assert refused.status == 404
    assert "WB-LIID-B" not in refused.text()


def test_conversations_and_names_of_a_simulated_session_and_the_case_search(
    world: World, page: Page
) -> None:
    from receiver.management.commands.simulate import RESOLVER, SERVER, TLS_SERVER_NAME

    page.goto(f"{world.product.base}/sessions/{world.talking}/")
    with page.expect_navigation():
        page.click("text=conversations and names")
    assert page.url == f"{world.product.base}/sessions/{world.talking}/conversations/"
    conversations = page.locator("tr[data-conversation]")
    protocols = {row.locator("td").nth(0).inner_text() for row in conversations.all()}
    assert {"TCP", "UDP"} <= protocols, protocols
    names = {
        (row.locator("td").nth(0).inner_text(), row.locator("td").nth(1).inner_text())
        for row in page.locator("tr[data-name]").all()
    }
    kinds = {kind for kind, _name in names}
    assert any(name == TLS_SERVER_NAME for _kind, name in names), names
    assert any(name == "www.example.com" for _kind, name in names), names
    assert len(kinds) >= 3, names  # DNS, TLS server name, HTTP host
    screenshot(page, "10-conversations")

    # A conversation's packets: the stored list, filtered to it.
    tls = page.locator("tr[data-conversation]", has_text="443").first
    with page.expect_navigation():
        tls.locator("a:text('packets')").click()
    assert "#stored" in page.url
    rows = shown_rows(page)
    assert rows
    assert all("443" in (row["sport"], row["dport"]) for row in rows)
    assert any("Client Hello" in row["info"] for row in rows), [row["info"] for row in rows]
    screenshot(page, "11-conversation-packets")

    # The case search: a name finds the conversation with its server, not the resolver.
    page.goto(f"{world.product.base}/cases/{world.case}/")
    box = page.locator("form[data-case-search]")
    box.locator('input[name="q"]').fill(TLS_SERVER_NAME)
    with page.expect_navigation():
        box.locator('input[name="q"]').press("Enter")
    assert f"/cases/{world.case}/search/" in page.url
    screenshot(page, "12-case-search")
    # Every conversation with the name's server (its TLS one among them), none with the
    # resolver that answered for it.
    found = [row.inner_text() for row in page.locator("tr[data-conversation]").all()]
    assert any("443" in row for row in found), found
    assert all(SERVER in row for row in found), found
    assert RESOLVER not in page.locator("table.conversations").inner_text()
    assert page.locator(f'tr[data-session="{world.talking}"]').count() == 1
    assert page.locator(f'tr[data-session="{world.session}"]').count() == 0
