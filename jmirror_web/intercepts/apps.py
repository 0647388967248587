from django.apps import AppConfig


class InterceptsConfig(AppConfig):
    name = "jmirror_web.intercepts"
    verbose_name = "Intercept records"

    def ready(self) -> None:
        from jmirror_web import db_lookups  # noqa: F401 (registers the integer "in" lookup)
        from jmirror_web.intercepts import object_retention

        # A case's legal hold and retention follow it onto its objects in the store.
        object_retention.connect_hooks()
