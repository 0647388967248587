"""The ASGI entry point: ``daphne jmirror_web.asgi:application``."""

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")

# Django must be set up before anything imports models, so this comes first.
django_asgi_application = get_asgi_application()

application = ProtocolTypeRouter({"http": django_asgi_application})
