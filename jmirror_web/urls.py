from django.contrib import admin
from django.urls import include, path

from jmirror_web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include("jmirror_web.api.urls")),
    path("", include("jmirror_web.exports.urls")),
    path("", include("jmirror_web.conversations.urls")),
    path("", include("jmirror_web.console.urls")),
]
