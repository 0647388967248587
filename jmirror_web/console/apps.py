from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The pages analysts, LI administrators and system administrators work in."""

    name = "jmirror_web.console"
    label = "console"
