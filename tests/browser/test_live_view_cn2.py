"""A CN2 / Contrail session in a real browser, as tests/browser/test_live_view.py does for
jmirror: ``manage.py serve`` receiving on a CN2 vRouter's analyzer port, traffic from
``manage.py simulate --format contrail``. The analyst's case page adds the new session's
row live, named by format and analyzer port (never by its internal mid); its live view
lists the mirrored Ethernet frames; a row's packet page shows the Juniper header above
Ethernet. Any JavaScript error or console error on a page fails the test.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import BrowserContext

from tests.browser.conftest import needs_chromium
from tests.browser.test_live_view import (
    PASSWORD,
    ROWS,
    PageErrors,
    context,  # noqa: F401 (a fixture)
    errors,  # noqa: F401 (a fixture)
    screenshot,
    sign_in,
    wait_live,
)
from tests.e2e_helpers import ServedProduct, free_port

pytestmark = [pytest.mark.browser, needs_chromium]

# The vRouter and its analyzer port must be on record before the server starts: it
# listens on the CN2 routers' analyzer ports as the records have them then.
RECORDS = """
import json
from datetime import timedelta
from django.contrib.auth.models import Group, User
from django.utils import timezone
from jmirror_web.intercepts.models import Case, CaseAssignment, Intercept, Router
now = timezone.now()
user = User.objects.create_user("analyst-cn2", password=PASSWORD)
user.groups.add(Group.objects.get(name="analyst"))
vrouter = Router.objects.create(name="lab-vrouter", address="127.0.0.1", kind="cn2",
    format="contrail", port=PORT)
case = Case.objects.create(reference="BRW-CN2", title="Browser test CN2", agency="Test agency",
    status="active", valid_from=now - timedelta(hours=1), valid_until=now + timedelta(days=3))
intercept = Intercept.objects.create(case=case, liid="BRW-CN2-LIID", kind="cn2",
    analyzer_port=PORT, valid_from=case.valid_from, valid_until=case.valid_until)
intercept.routers.add(vrouter)
CaseAssignment.objects.create(case=case, user=user)
print(json.dumps({"case": case.pk}))
"""


@dataclass(frozen=True)
class World:
    product: ServedProduct
    analyzer_port: int
    case: int

    def simulate(self, count: int) -> None:
        self.product.manage(
            "simulate",
            "--to",
            f"127.0.0.1:{self.analyzer_port}",
            "--format",
            "contrail",
            "--count",
            str(count),
            "--rate",
            "0",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    product = ServedProduct(tmp_path_factory.mktemp("browser-cn2") / "data")
    port = free_port(socket.SOCK_DGRAM)
    try:
        product.manage("migrate", "--noinput")
        code = RECORDS.replace("PASSWORD", repr(PASSWORD)).replace("PORT", str(port))
        ids = json.loads(product.shell(code).strip().splitlines()[-1])
        product.start()
        said = rf"receiving Contrail \(CN2\) on 127\.0\.0\.1:{port} \(UDP\)"
        assert re.search(said, product.read_output()), product.read_output()
        yield World(product, port, ids["case"])
    finally:
        product.stop()
        print(product.read_output())


def test_analyst_watches_a_contrail_session_live(
    world: World,
    context: BrowserContext,  # noqa: F811
    errors: PageErrors,  # noqa: F811
) -> None:
    base = world.product.base
    page = errors.watch(context.new_page())
    sign_in(page, base, "analyst-cn2")

    # The case page before any traffic: the session's row is added live when it starts.
    page.goto(f"{base}/cases/{world.case}/")
    wait_live(page)
    world.simulate(30)
    row = page.locator("tbody[data-sessions] tr[data-stream]")
    row.first.wait_for()
    text = row.first.inner_text()
    assert "Contrail (CN2)" in text
    assert f"analyzer port {world.analyzer_port}" in text
    assert "0x100000001" not in page.content()
    screenshot(page, "cn2-1-case")
    # Its first summaries may come before the session's record (no link yet): a later
    # one, or the page loaded again, links it.
    for _ in range(10):
        if row.first.locator("a").count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    assert "0x100000001" not in page.content()
    assert f"analyzer port {world.analyzer_port}" in row.first.inner_text()

    # The session page: named by vRouter and port; the frames arrive in its live list.
    row.first.locator("a").first.click()
    page.wait_for_url(re.compile(rf"{base}/sessions/\d+/"))
    named = page.locator('[data-stream-kind="contrail"]').inner_text()
    assert named == (
        f"Contrail (CN2), vRouter lab-vrouter (127.0.0.1), analyzer port {world.analyzer_port}"
    )
    wait_live(page)
    world.simulate(30)
    page.wait_for_function(f"() => document.querySelectorAll({ROWS!r}).length > 0")
    listed = " ".join(page.locator(ROWS).all_inner_texts())
    assert any(protocol in listed for protocol in ("ARP", "DNS", "TCP", "UDP", "ICMP")), listed
    screenshot(page, "cn2-2-live-view", full_page=False)

    # A row's packet page: the Juniper header above the Ethernet frame.
    link = page.locator(ROWS).last.locator("td").first.locator("a")
    href = link.get_attribute("href") or ""
    for _ in range(10):
        page.goto(base + href)
        page.wait_for_load_state()
        if re.search(r"/packets/\d+/$", page.url):
            break
        page.wait_for_timeout(1000)
    assert re.search(r"/packets/\d+/$", page.url), page.url
    layers = page.locator(".packet-tree details.layer > summary").all_inner_texts()
    assert layers[0] == "Juniper Virtual Network Information", layers
    assert "Ethernet" in layers, layers
    assert (
        "Juniper header: capture host 127.0.0.1" in page.locator("table.packet-facts").inner_text()
    )
    screenshot(page, "cn2-3-packet-detail")
