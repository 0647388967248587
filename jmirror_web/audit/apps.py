from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "jmirror_web.audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from jmirror_web.audit import log

        log.connect()
