from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class JMirrorConfig(AppConfig):
    """jmirror-web itself (no models): at start, before the other apps are ready, it makes
    what the data directory must hold (:mod:`jmirror_web.data_directory`)."""

    name = "jmirror_web"
    verbose_name = "jmirror-web"

    def ready(self) -> None:
        from django.conf import settings

        from jmirror_web.data_directory import prepare

        prepare(settings)


class JMirrorAdminConfig(AdminConfig):
    """Django's admin app with our site (:mod:`jmirror_web.admin_site`), which is
    entered by role."""

    default_site = "jmirror_web.admin_site.JMirrorAdminSite"
