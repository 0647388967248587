"""The console in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

One product process for the module (``manage.py serve``: Daphne with the receiver inside
it, SQLite, the in-memory channel layer, its own data directory), traffic from
``manage.py simulate``. Analyst A, assigned to case A, signs in, follows the links from
the dashboard to the case and to the session's live view, watches packets arrive, pauses
and resumes the list, sees the rate chart move and opens a packet's detail. Analyst B,
assigned only to case B, sees none of it: not on the dashboard, a 404 for the pages and
``forbidden`` on the websocket, with no data for case A. Any JavaScript error or console
error on a page fails the test.

Screenshots go to test-artifacts/browser/ (not committed) for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

from tests.browser.conftest import CHROMIUM
from tests.e2e_helpers import REPO, ServedProduct

ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser test passphrase 41"
MID_A = 0x300
MID_B = 0x301
ARRIVAL_LIMIT_MS = 2000  # the acceptance: packets show within 2 seconds
WAIT_MS = 15000  # anything else the page has to do, on a busy shared machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)",
    ),
]

RECORDS = f"""
import json
from datetime import timedelta
from django.contrib.auth.models import Group, User
from django.utils import timezone
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Router
now = timezone.now()
analysts = Group.objects.get(name="analyst")
router = Router.objects.create(name="lab-mx", address="127.0.0.1")
ids = {{}}
for letter, mid in (("a", {MID_A}), ("b", {MID_B})):
    user = User.objects.create_user(f"analyst-{{letter}}", password={PASSWORD!r})
    user.groups.add(analysts)
    case = Case.objects.create(reference=f"BRW-{{letter.upper()}}",
        title=f"Browser test case {{letter.upper()}}", agency="Test agency", status="active",
        valid_from=now - timedelta(hours=1), valid_until=now + timedelta(days=3))
    intercept = Intercept.objects.create(case=case, liid=f"BRW-LIID-{{letter.upper()}}",
        intercept_id=mid, valid_from=case.valid_from, valid_until=case.valid_until)
    intercept.routers.add(router)
    CaseAssignment.objects.create(case=case, user=user)
    ids[letter] = case.pk
print(json.dumps(ids))
"""

# Prints the pk of case A's session once it has stored packets in a capture file the
# database knows of (what the packet detail page reads), or nothing after 60 s.
WAIT_FOR_SESSION = """
import time
from jmirror_web.intercepts.models import CaptureFile, Session
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    session = Session.objects.filter(intercept__case_id=CASE_A, stored_packets__gt=0).first()
    if session and CaptureFile.objects.filter(session=session, packets__gt=0).exists():
        print(session.pk)
        break
    time.sleep(0.5)
"""


@dataclass(frozen=True)
class World:
    product: ServedProduct
    case_a: int
    case_b: int
    session_a: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    product = ServedProduct(tmp_path_factory.mktemp("browser") / "data")
    try:
        product.start()
        ids = json.loads(product.shell(RECORDS).strip().splitlines()[-1])
        # The receiver's gate reloads the records within 2 s of a change.
        time.sleep(2.5)
        product.simulate(50, MID_A)
        found = product.shell(WAIT_FOR_SESSION.replace("CASE_A", str(ids["a"]))).strip()
        assert found, f"no session for case A; server output:\n{product.read_output()}"
        yield World(product, ids["a"], ids["b"], int(found))
    finally:
        product.stop()
        print(product.read_output())


class PageErrors:
    """Console errors and uncaught exceptions of the pages it watches."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page: Page) -> Page:
        def console(message: ConsoleMessage) -> None:
            source = message.location.get("url") or "?"
            # Pages without the console's <link rel="icon"> (Django's plain 404 page) make
            # Chromium ask for /favicon.ico, which the app does not serve.
            if message.type == "error" and not source.endswith("/favicon.ico"):
                self.messages.append(f"console error on {page.url} ({source}): {message.text}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.messages.append(f"{page.url}: {error}"))
        return page


@pytest.fixture
def errors() -> Iterator[PageErrors]:
    collected = PageErrors()
    yield collected
    assert collected.messages == []


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1280, "height": 900})
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        opened.close()


def sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.locator(".bar .who").inner_text() == username


def wait_live(page: Page) -> None:
    """The page's websocket is open and its subscription accepted."""
    page.wait_for_selector('[data-live-state][data-state="live"]')


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


ROWS = "tbody[data-packets] tr"
COUNT_ROWS = f"() => document.querySelectorAll({ROWS!r}).length"
MORE_ROWS = f"n => document.querySelectorAll({ROWS!r}).length > n"

# The chart as drawn: its PNG, and how many pixels of the packets/s line (#0b5cad) lie
# clearly above its zero line, i.e. how much of the line traffic has lifted (right of
# the "max ... packets/s" label, drawn in the same colour at the top left).
CHART = """canvas => {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const ratio = window.devicePixelRatio || 1;
  const data = context.getImageData(0, 0, width, height).data;
  const zero = Math.floor(height / 2) - 4 * ratio;
  let lifted = 0;
  for (let y = 0; y < zero; y += 1) {
    for (let x = Math.ceil(200 * ratio); x < width; x += 1) {
      const i = (y * width + x) * 4;
      if (data[i + 3] > 100 && data[i + 2] > 120 && data[i] < 90 && data[i + 1] < 140) lifted += 1;
    }
  }
  return { png: canvas.toDataURL(), lifted };
}"""


def test_analyst_watches_a_session_live(
    world: World, context: BrowserContext, errors: PageErrors
) -> None:
    product, base = world.product, world.product.base
    page = errors.watch(context.new_page())
    sign_in(page, base, "analyst-a")

    # Dashboard: case A only, counting live.
    wait_live(page)
    assert page.locator(f'tr[data-case="{world.case_a}"]').count() == 1
    assert page.locator("table.cases").inner_text().count("BRW-") == 1
    assert "BRW-B" not in page.content()
    packets_cell = page.locator(f'tr[data-case="{world.case_a}"] [data-field="packets"]')
    before = int(packets_cell.get_attribute("data-value") or 0)
    product.simulate(20, MID_A)
    page.wait_for_function(
        "([selector, n]) => Number(document.querySelector(selector).dataset.value) > n",
        arg=[f'tr[data-case="{world.case_a}"] [data-field="packets"]', before],
    )
    screenshot(page, "1-dashboard")

    # Case page, through the dashboard's link; the session row links to the live view.
    page.click(f'tr[data-case="{world.case_a}"] a')
    page.wait_for_url(f"{base}/cases/{world.case_a}/")
    wait_live(page)
    session_row = page.locator(f'tr[data-session="{world.session_a}"]')
    assert "BRW-LIID-A" in session_row.inner_text()
    assert "0x300" in session_row.inner_text()
    screenshot(page, "2-case")
    session_row.locator("a").first.click()
    page.wait_for_url(f"{base}/sessions/{world.session_a}/")

    # Live view: packets sent now are listed within 2 seconds.
    wait_live(page)
    assert page.locator("[data-live-view]").is_visible()
    # Before any new packet, the list and the chart are filled from the stored history
    # (the packets simulated above), and the note says where the rows come from.
    page.wait_for_function(MORE_ROWS, arg=0, timeout=WAIT_MS)
    assert "stored before the page opened" in page.locator("[data-list-note]").inner_text()
    canvas = page.locator("canvas[data-chart]")
    page.wait_for_function(
        f"canvas => ({CHART})(canvas).lifted > 0", arg=canvas.element_handle(), timeout=WAIT_MS
    )
    screenshot(page, "3-live-view-on-load", full_page=False)
    quiet = canvas.evaluate(CHART)
    shown = page.evaluate(COUNT_ROWS)
    product.simulate(50, MID_A)
    sent_at = time.monotonic()
    page.wait_for_function(MORE_ROWS, arg=shown, timeout=ARRIVAL_LIMIT_MS)
    latency = time.monotonic() - sent_at
    print(f"rows showed {latency:.3f} s after simulate returned")
    rows = page.locator(ROWS)
    first = rows.first.locator("td").all_inner_texts()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", first[0]), first
    # The analyst has the content right: a row's time links to its packet by receive time.
    href = rows.first.locator("td").first.locator("a").get_attribute("href") or ""
    assert re.fullmatch(rf"/sessions/{world.session_a}/packets/\?at=\d{{19}}", href), href
    assert any(protocol in " ".join(rows.all_inner_texts()) for protocol in ("TCP", "UDP"))
    assert page.locator("[data-list-note]").inner_text().startswith("showing the latest")
    # The totals: 50 + 20 + 50 sent. The page loaded the recorded totals, which trail the
    # live summaries by up to a second, so packets summarised before it subscribed are
    # missing from them until the page reads the records again (every 5 s).
    page.wait_for_function(
        "selector => Number(document.querySelector(selector).dataset.value) >= 120",
        arg='[data-totals] [data-field="packets"]',
        timeout=8000,
    )

    # The chart moves: a redraw (once a second) after the traffic draws the new packets.
    page.wait_for_function(
        f"([canvas, before]) => ({CHART})(canvas).png !== before",
        arg=[canvas.element_handle(), quiet["png"]],
    )
    busy = canvas.evaluate(CHART)
    assert busy["lifted"] > 0
    rate = page.locator('[data-totals] [data-field="rate"]').inner_text()
    assert re.fullmatch(r"[\d.,]+/s · [\d.,]+\s\S+/s", rate), rate
    screenshot(page, "3-live-view", full_page=False)  # what the analyst sees first
    screenshot(page, "3-live-view-full")

    # Pause holds the list; the page counts what arrives meanwhile; resume shows it.
    pause = page.locator("button[data-pause]")
    pause.click()
    assert pause.inner_text() == "Resume"
    held = page.locator("tbody[data-packets]").inner_html()
    held_rows = page.evaluate(COUNT_ROWS)
    product.simulate(30, MID_A)
    page.wait_for_function(
        "() => /paused, [1-9][0-9,]* new/"
        ".test(document.querySelector('[data-list-note]').textContent)"
    )
    page.wait_for_timeout(1000)  # a few more updates' worth of time
    assert page.locator("tbody[data-packets]").inner_html() == held
    note = page.locator("[data-list-note]").inner_text()
    assert note.startswith(f"showing the {held_rows} rows listed when paused"), note
    waiting = int(re.search(r"paused, ([\d,]+) new", note)[1].replace(",", ""))  # type: ignore[index]
    assert waiting > 0
    screenshot(page, "4-live-view-paused", full_page=False)
    pause.click()
    assert pause.inner_text() == "Pause"
    assert page.evaluate(COUNT_ROWS) > held_rows
    assert "paused" not in page.locator("[data-list-note]").inner_text()

    # The filter narrows the list on the page, and clearing it brings every row back.
    everything = page.evaluate(COUNT_ROWS)
    protocol = rows.first.locator("td").nth(3).inner_text().lower()
    page.fill('[data-filters] input[name="protocol"]', protocol)
    assert 0 < page.evaluate(COUNT_ROWS) <= everything
    protocols = rows.locator("td:nth-child(4)").all_inner_texts()
    assert all(protocol in shown.lower() for shown in protocols), protocols
    page.fill('[data-filters] input[name="protocol"]', "no-such-protocol")
    assert page.evaluate(COUNT_ROWS) == 0
    assert "0 match the filter" in page.locator("[data-list-note]").inner_text()
    page.fill('[data-filters] input[name="protocol"]', "")
    assert page.evaluate(COUNT_ROWS) == everything

    # Packet detail, from the oldest live row's time: the decoded layers as a tree, and
    # the bytes. The receiver records a packet within about a second; until then the link
    # leads back to the session page saying so, hence the few tries.
    link = rows.last.locator("td").first.locator("a")
    href = link.get_attribute("href") or ""
    link.click()
    for _ in range(10):
        page.wait_for_load_state()
        if re.search(r"/packets/\d+/$", page.url):
            break
        page.wait_for_timeout(1000)
        page.goto(base + href)
    assert re.fullmatch(rf"{base}/sessions/{world.session_a}/packets/\d+/", page.url), page.url
    assert page.locator("h1").inner_text().startswith("Packet ")
    assert f"({href.partition('at=')[2]} ns)" in page.locator("table.packet-facts").inner_text()
    layers = page.locator(".packet-tree details.layer > summary").all_inner_texts()
    assert len(layers) >= 2, layers
    assert any("PPP" in layer or "IP" in layer for layer in layers), layers
    assert page.locator(".packet-tree .field").count() > 3
    assert page.locator("pre.hexdump").inner_text().strip()
    screenshot(page, "5-packet-detail")


PROBE = """([session, caseId]) => {
  window.probe = { messages: [], closed: null, opened: false };
  const socket = new WebSocket(`ws://${location.host}/ws/live/`);
  socket.addEventListener("open", () => {
    window.probe.opened = true;
    socket.send(JSON.stringify({ action: "subscribe", stream: "dashboard" }));
    socket.send(JSON.stringify({ action: "subscribe", stream: "session", id: session }));
    socket.send(JSON.stringify({ action: "subscribe", stream: "case", id: caseId }));
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    window.probe.messages.push(message);
    if (message.type === "updates") {
      socket.send(JSON.stringify({ action: "ack", seq: message.seq }));
    }
  });
  socket.addEventListener("close", (event) => { window.probe.closed = event.code; });
  window.probeSocket = socket;
}"""


def test_analyst_of_another_case_gets_nothing(
    world: World, context: BrowserContext, errors: PageErrors
) -> None:
    product, base = world.product, world.product.base
    page = errors.watch(context.new_page())
    sign_in(page, base, "analyst-b")
    wait_live(page)
    assert page.locator(f'tr[data-case="{world.case_b}"]').count() == 1
    assert page.locator(f'tr[data-case="{world.case_a}"]').count() == 0
    assert "BRW-A" not in page.content()
    screenshot(page, "6-other-analyst-dashboard")

    # The pages of case A are not found (a page of its own: the 404 is expected there).
    elsewhere = context.new_page()
    for path in (
        f"/sessions/{world.session_a}/",
        f"/cases/{world.case_a}/",
        f"/sessions/{world.session_a}/packets/1/",
    ):
        response = elsewhere.goto(base + path)
        assert response is not None
        assert response.status == 404, path
        assert "BRW-LIID-A" not in elsewhere.content()
    elsewhere.close()

    # The websocket refuses case A's streams, and no traffic of case A reaches this user.
    page.evaluate(PROBE, [world.session_a, world.case_a])
    page.wait_for_function(
        "() => window.probe.messages.filter(m => m.type === 'error' || "
        "m.type === 'subscribed').length >= 3"
    )
    product.simulate(50, MID_A)
    page.wait_for_timeout(2500)  # well past the 2 s in which A's page shows them
    probe: dict[str, Any] = page.evaluate("() => window.probe")
    page.evaluate("() => window.probeSocket.close()")
    messages: list[dict[str, Any]] = probe["messages"]
    refused = {
        (m["stream"], m["id"])
        for m in messages
        if m["type"] == "error" and m.get("code") == "forbidden"
    }
    assert refused == {("session", world.session_a), ("case", world.case_a)}, messages
    assert {"type": "subscribed", "stream": "dashboard", "id": None} in messages
    updates = [item for m in messages if m["type"] == "updates" for item in m["items"]]
    assert updates == [], updates
    assert probe["closed"] is None
    # The dashboard page of B counted nothing either.
    packets = page.locator(f'tr[data-case="{world.case_b}"] [data-field="packets"]')
    assert packets.get_attribute("data-value") == "0"
