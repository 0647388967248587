from django.apps import AppConfig


class LiveConfig(AppConfig):
    """Websocket consumers that relay the receiver's live summaries to the browser."""

    name = "jmirror_web.live"
    label = "live"
