from django.apps import AppConfig


class ServerConfig(AppConfig):
    """The web server around the ASGI application and its ``serve`` command."""

    name = "jmirror_web.server"
    label = "server"
    verbose_name = "Web server"
