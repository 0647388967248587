from django.apps import AppConfig


class InterceptsConfig(AppConfig):
    name = "jmirror_web.intercepts"
    verbose_name = "Intercept records"

    def ready(self) -> None:
        from jmirror_web import db_lookups  # noqa: F401 (registers the integer "in" lookup)
