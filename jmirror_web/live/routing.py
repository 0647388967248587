"""The websocket URLs, mounted by jmirror_web.asgi."""

from django.urls import URLPattern, path

from jmirror_web.live.consumers import LiveConsumer

websocket_urlpatterns: list[URLPattern] = [path("ws/live/", LiveConsumer.as_asgi())]
