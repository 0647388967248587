"""The ASGI application, which ``manage.py serve`` runs under Daphne."""

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")

# Django must be set up before anything imports models, so this comes first.
django_asgi_application = get_asgi_application()

from jmirror_web.live.origin import SiteOriginValidator  # noqa: E402
from jmirror_web.live.routing import websocket_urlpatterns  # noqa: E402  (needs the models)
from jmirror_web.server.body_limit import RequestBodyLimit  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Django spools a whole request body to disk before any view can refuse it: an
        # oversized one is refused here first.
        "http": RequestBodyLimit(django_asgi_application),
        # The Origin must be this site's, scheme, host and port (a page of another site or
        # of another port of this host must not ride the user's cookie), checked before
        # the consumer runs; inside the auth middleware only so that a refusal is audited
        # with the user whose cookie came with it (jmirror_web.live.origin).
        "websocket": AuthMiddlewareStack(SiteOriginValidator(URLRouter(websocket_urlpatterns))),
    }
)
