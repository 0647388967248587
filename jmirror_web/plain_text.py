"""Text typed by people, as the product accepts it: no control or invisible formatting
characters (a NUL, an escape, a right-to-left override...), line breaks and tabs only
where a field is meant to hold several lines.

Such characters have no use in a reference, a name or a parameter, and whatever is
accepted is written as it is into audit events, export manifests and pcapng comments
(a line break in a case's agency would add a line of its own to an export's comment).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

# Controls, invisible formatting (bidi overrides, zero-width characters) and lone
# surrogates; private-use and not-yet-assigned characters are let through.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})
_LINE_BREAKS: Final = frozenset("\n\r\t")


def first_control_character(text: str, *, multi_line: bool = False) -> str | None:
    """The first character of ``text`` that is refused, or None."""
    for character in text:
        if unicodedata.category(character) in _REFUSED_CATEGORIES and not (
            multi_line and character in _LINE_BREAKS
        ):
            return character
    return None


def control_character_message(what: str, character: str) -> str:
    found = f"U+{ord(character):04X}"
    return f"{what[:1].upper()}{what[1:]} may not contain control characters (found {found})."


def refuse_control_characters(text: str, what: str, *, multi_line: bool = False) -> None:
    """Raise a ValidationError naming ``what`` when ``text`` holds a refused character."""
    character = first_control_character(text, multi_line=multi_line)
    if character is not None:
        raise ValidationError(control_character_message(what, character), code="control_character")


def control_character_errors(
    record: Any, single_line: Iterable[str], multi_line: Iterable[str] = ()
) -> dict[str, str]:
    """For a model's ``clean``: an error per text field of ``record`` holding a refused
    character, keyed by field name."""
    errors: dict[str, str] = {}
    for names, several_lines in ((single_line, False), (multi_line, True)):
        for name in names:
            value = getattr(record, name, "")
            if isinstance(value, str):
                character = first_control_character(value, multi_line=several_lines)
                if character is not None:
                    errors[name] = control_character_message("this field", character)
    return errors


class RefuseNulMiddleware:
    """Answers 400 to a request whose path or query string holds a NUL character.

    No page or API parameter has a use for one, and PostgreSQL refuses NUL in text: an
    admin search or list filter with ``%00`` reached the database and failed there (a
    500 on PostgreSQL, found by the no-500s property test). Decided before sessions or
    anything else touch the database. Form fields (POST) are Django forms', whose text
    fields already refuse NUL with a message next to the field.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._refusal(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        response: HttpResponse = await self.get_response(request)
        return response

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        if "\x00" in request.path:
            where = "The address"
        else:
            where = next(
                (
                    f"The parameter {name[:40]!r}"
                    for name, values in request.GET.lists()
                    if "\x00" in name or any("\x00" in value for value in values)
                ),
                "",
            )
        if not where:
            return None
        message = f"{where} holds a NUL character, which no address or parameter may hold."
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=400)
        return HttpResponseBadRequest(message + "\n", content_type="text/plain; charset=utf-8")
