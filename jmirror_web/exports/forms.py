"""The export parameters, validated once for the pages and the API alike.

Times are ISO 8601; a time without an offset is UTC (what the pages say next to the
inputs, and what the API documents), and it must lie between :data:`EARLIEST_MOMENT`
and :data:`LATEST_MOMENT` once in UTC, so that no later arithmetic on it (nanoseconds
for the engine, a warrant's bounds) can overflow. Filters are lists separated by commas
or spaces, each at most :data:`MAX_FILTER_ITEMS` long, so that a request cannot make the
engine compare every packet against thousands of criteria. No parameter may hold a
control character (a NUL included), and an address may not carry an IPv6 zone id:
whatever is accepted here ends up in audit events, manifests and pcapng comments.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any, Final

from django import forms
from django.core.exceptions import ValidationError

from jmirror_web.exports.request import PROTOCOL_NUMBERS, ExportFormat, PacketFilter
from jmirror_web.exports.service import ExportParameters
from jmirror_web.intercepts.models import EARLIEST_MOMENT, LATEST_MOMENT
from jmirror_web.plain_text import refuse_control_characters

MAX_FILTER_ITEMS: Final = 16
MAX_FILTER_CHARS: Final = 1000
MAX_MOMENT_CHARS: Final = 40
IP_ONLY_LABEL: Final = "pcap, IP only (PPP framing removed: a conversion)"
_SEPARATORS = re.compile(r"[\s,]+")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; no offset means UTC. Refused unless
    it lies between :data:`EARLIEST_MOMENT` and :data:`LATEST_MOMENT`."""
    refuse_control_characters(text, "a time")
    invalid = ValidationError(
        "Enter a time as ISO 8601, such as 2026-12-01T10:00:00Z (UTC when no offset is given).",
        code="invalid",
    )
    # fromisoformat takes any character between date and time; the pages and the API
    # document T or a space, and only ASCII.
    if not text.isascii():
        raise invalid
    out_of_range = ValidationError(
        f"A time must lie between {EARLIEST_MOMENT:%Y-%m-%d} and {LATEST_MOMENT:%Y-%m-%d} UTC.",
        code="out_of_range",
    )
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise invalid from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        # Year 1 with a positive offset (or 9999 with a negative one) lies outside what
        # a datetime can hold once in UTC.
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise out_of_range from None
    if not EARLIEST_MOMENT <= moment <= LATEST_MOMENT:
        raise out_of_range
    return moment


def _items(text: str, what: str) -> list[str]:
    if len(text) > MAX_FILTER_CHARS:
        raise ValidationError(f"At most {MAX_FILTER_CHARS} characters of {what}.")
    refuse_control_characters(text, what)
    items = [item for item in _SEPARATORS.split(text.strip()) if item]
    if len(items) > MAX_FILTER_ITEMS:
        raise ValidationError(f"At most {MAX_FILTER_ITEMS} {what}.")
    return items


class MomentField(forms.Field):
    """An ISO 8601 time (see :func:`parse_moment`), at most 40 characters."""

    widget = forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"})

    def to_python(self, value: Any) -> datetime | None:
        text = str(value or "").strip()
        if not text:
            return None
        if len(text) > MAX_MOMENT_CHARS:
            raise ValidationError(f"A time is at most {MAX_MOMENT_CHARS} characters.")
        return parse_moment(text)

    def prepare_value(self, value: Any) -> Any:
        # A form shown again keeps what was typed, as a datetime-local input can show it
        # (UTC, no offset, milliseconds at most); what it cannot parse is left as typed.
        if isinstance(value, str) and value.strip() and len(value) <= MAX_MOMENT_CHARS:
            try:
                value = parse_moment(value)
            except ValidationError:
                return value
        if isinstance(value, datetime):
            shown = f"{value.astimezone(UTC):%Y-%m-%dT%H:%M:%S}"
            return shown + (f".{value.microsecond // 1000:03d}" if value.microsecond else "")
        return value


class ExportForm(forms.Form):
    """A session export's parameters (``format`` pcapng, pcap, or pcap-ip: the IP packets
    alone as raw IP, a conversion)."""

    FORMATS: tuple[tuple[str, str], ...] = (
        (ExportFormat.PCAPNG, "pcapng (with the export's comment)"),
        (ExportFormat.PCAP, "pcap"),
        (ExportFormat.PCAP_IP, IP_ONLY_LABEL),
    )

    format = forms.ChoiceField(choices=(), initial=ExportFormat.PCAPNG)
    start = MomentField(required=False, label="From (UTC)")
    end = MomentField(required=False, label="To (UTC)")
    addresses = forms.CharField(
        required=False, max_length=MAX_FILTER_CHARS, help_text="IPv4 or IPv6, source or destination"
    )
    ports = forms.CharField(
        required=False, max_length=MAX_FILTER_CHARS, help_text="TCP, UDP, SCTP, DCCP, UDP-Lite"
    )
    protocols = forms.CharField(
        required=False,
        max_length=MAX_FILTER_CHARS,
        help_text="names (tcp, udp, icmp, icmpv6...) or IP protocol numbers",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        format_field = self.fields["format"]
        assert isinstance(format_field, forms.ChoiceField)
        format_field.choices = self.FORMATS

    def clean_addresses(self) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        found = set()
        for item in _items(self.cleaned_data["addresses"], "addresses"):
            if "%" in item:
                # Packets carry no zone: a zone id could only be copied, unbounded, into
                # the manifest and the pcapng comment.
                raise ValidationError(
                    f"{item[:50]!r}: an address filter takes no IPv6 zone id (the part from %)."
                )
            try:
                found.add(ipaddress.ip_address(item))
            except ValueError:
                raise ValidationError(f"{item[:50]!r} is not an IPv4 or IPv6 address.") from None
        return frozenset(found)

    def clean_ports(self) -> frozenset[int]:
        found = set()
        for item in _items(self.cleaned_data["ports"], "ports"):
            if not (item.isascii() and item.isdigit() and int(item) <= 65535):
                raise ValidationError(f"{item[:50]!r} is not a port (0 to 65535).")
            found.add(int(item))
        return frozenset(found)

    def clean_protocols(self) -> frozenset[int]:
        found = set()
        for item in _items(self.cleaned_data["protocols"], "protocols"):
            name = item.lower()
            if name in PROTOCOL_NUMBERS:
                found.add(PROTOCOL_NUMBERS[name])
            elif name.isascii() and name.isdigit() and int(name) <= 255:
                found.add(int(name))
            else:
                raise ValidationError(
                    f"{item[:50]!r} is not a protocol: use "
                    f"{', '.join(PROTOCOL_NUMBERS)} or a number from 0 to 255."
                )
        return frozenset(found)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start is not None and end is not None and start >= end:
            self.add_error("end", "The window's end must be after its start.")
        return cleaned

    def parameters(self) -> ExportParameters:
        """The validated parameters (call after ``is_valid()``)."""
        data = self.cleaned_data
        return ExportParameters(
            format=ExportFormat(data["format"]),
            start=data["start"],
            end=data["end"],
            packet_filter=PacketFilter(
                addresses=data["addresses"], ports=data["ports"], protocols=data["protocols"]
            ),
            member_format=ExportFormat(data.get("member_format") or ExportFormat.PCAPNG),
        )


class InterceptExportForm(ExportForm):
    """All sessions of an intercept: one pcapng (an interface per session) or a zip."""

    FORMATS = (
        (ExportFormat.PCAPNG, "one pcapng, an interface per session"),
        (ExportFormat.ZIP, "zip of per-session files"),
    )
    member_format = forms.ChoiceField(
        choices=(
            (ExportFormat.PCAPNG, "pcapng"),
            (ExportFormat.PCAP, "pcap"),
            (ExportFormat.PCAP_IP, IP_ONLY_LABEL),
        ),
        initial=ExportFormat.PCAPNG,
        required=False,
        label="Files in the zip",
    )


class VerifyForm(forms.Form):
    """A file to identify (hashed as it is received, never stored) or its SHA-256."""

    file = forms.FileField(required=False, allow_empty_file=True)
    sha256 = forms.CharField(required=False, max_length=80, label="or its SHA-256")

    def clean_sha256(self) -> str:
        text: str = self.cleaned_data["sha256"].strip()
        if text and not _HEX64.match(text):
            raise ValidationError("A SHA-256 is 64 hexadecimal digits.")
        return text.lower()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("file") and not cleaned.get("sha256") and not self.errors:
            raise ValidationError("Choose a file or paste a SHA-256.")
        return cleaned
