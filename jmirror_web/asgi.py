"""The ASGI application, which ``manage.py serve`` runs under Daphne."""

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")

# Django must be set up before anything imports models, so this comes first.
django_asgi_application = get_asgi_application()

from jmirror_web.body_limit import RequestBodyLimit  # noqa: E402
from jmirror_web.live.routing import websocket_urlpatterns  # noqa: E402  (needs the models)

application = ProtocolTypeRouter(
    {
        # Django spools a whole request body to disk before any view can refuse it: an
        # oversized one is refused here first.
        "http": RequestBodyLimit(django_asgi_application),
        # The canonical order: the Origin is checked before anything else runs (a page of
        # another site must not ride the user's cookie), then the session and user are
        # resolved for the consumer.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
