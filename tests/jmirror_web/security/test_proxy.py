"""Behind a reverse proxy, Daphne takes the client's address from the header the proxy
sets, so that audit events and sign-in lockouts name the client, not the proxy."""

from jmirror_web.server.management.commands.serve import proxy_options


def test_without_a_proxy_no_header_is_trusted() -> None:
    assert proxy_options(False) == {}


def test_behind_a_proxy_the_address_comes_from_x_real_ip_not_x_forwarded_for() -> None:
    assert proxy_options(True) == {
        "proxy_forwarded_address_header": "X-Real-IP",
        "proxy_forwarded_proto_header": "X-Forwarded-Proto",
    }


def test_daphne_reads_the_client_address_from_the_named_header() -> None:
    from daphne.utils import parse_x_forwarded_for

    options = proxy_options(True)
    headers = {
        b"x-real-ip": [b"198.51.100.7"],
        b"x-forwarded-for": [b"203.0.113.66, 198.51.100.7"],
        b"x-forwarded-proto": [b"https"],
    }
    address, scheme = parse_x_forwarded_for(
        headers,
        options["proxy_forwarded_address_header"],
        None,
        options["proxy_forwarded_proto_header"],
        ["172.18.0.1", 40000],
        "http",
    )
    assert (address[0], scheme) == ("198.51.100.7", "https")
