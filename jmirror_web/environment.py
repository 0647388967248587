"""Typed readers for the environment variables that configure jmirror-web.

Every reader fails loudly with :class:`ConfigurationError`, naming the variable and
what was wrong, so a typo in a deployment stops the service at start instead of
silently running with a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigurationError(Exception):
    """An environment variable holds a value jmirror-web cannot use."""


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(name, default)


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    value = environ[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        f"{name}={environ[name]!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off"
    )


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    try:
        value = int(environ[name].strip(), 0)
    except ValueError:
        raise ConfigurationError(f"{name}={environ[name]!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name}={value} is above the maximum {maximum}")
    return value


def env_list(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; blanks around items are ignored, empty items are an error."""
    environ = os.environ if environ is None else environ
    if name not in environ:
        return list(default)
    raw = environ[name].strip()
    if not raw:
        return []
    items = [item.strip() for item in raw.split(",")]
    if any(not item for item in items):
        raise ConfigurationError(f"{name}={environ[name]!r} has an empty item in its list")
    return items


def env_choice(
    name: str, default: str, choices: Sequence[str], environ: Mapping[str, str] | None = None
) -> str:
    """One word of ``choices``, matched case-insensitively and returned as spelled there."""
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    wanted = environ[name].strip().casefold()
    for choice in choices:
        if choice.casefold() == wanted:
            return choice
    raise ConfigurationError(f"{name}={environ[name]!r} is not one of {', '.join(choices)}")


def env_path(name: str, default: Path, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if name not in environ:
        return default
    raw = environ[name].strip()
    if not raw:
        raise ConfigurationError(f"{name} is set but empty; unset it or give a directory")
    return Path(raw).expanduser().resolve()


def env_secret(
    name: str, *, min_length: int = 1, environ: Mapping[str, str] | None = None
) -> str | None:
    """A secret given directly in NAME or in a file named by NAME_FILE (not both).

    The file form suits Docker and systemd credentials, which keep secrets out of the
    process environment. Errors never quote the secret itself.
    """
    environ = os.environ if environ is None else environ
    file_name = f"{name}_FILE"
    if name in environ and file_name in environ:
        raise ConfigurationError(f"set {name} or {file_name}, not both")
    if file_name in environ:
        if not environ[file_name].strip():
            raise ConfigurationError(f"{file_name} is set but empty; unset it or name a file")
        path = Path(environ[file_name].strip())
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigurationError(
                f"{file_name}={str(path)!r} cannot be read: {error.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"{file_name}={str(path)!r} is not UTF-8 text") from None
        if not value:
            raise ConfigurationError(f"{file_name}={str(path)!r} is empty")
        source = f"{file_name}={str(path)!r}"
    elif name in environ:
        value = environ[name].strip()
        if not value:
            raise ConfigurationError(f"{name} is set but empty")
        source = name
    else:
        return None
    if len(value) < min_length:
        raise ConfigurationError(
            f"{source} holds {len(value)} characters; at least {min_length} are needed"
        )
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:30030``) as a (host, port) pair; ValueError if not."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:30030")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


def listen_addresses(
    given: Sequence[str], default: Sequence[tuple[str, int]]
) -> list[tuple[str, int]]:
    """The receive addresses of a command's ``--listen`` options, else ``default`` (the
    setting); ValueError naming the first bad one."""
    return [parse_listen(text) for text in given] if given else list(default)
