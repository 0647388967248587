from django.apps import AppConfig


class ExportsConfig(AppConfig):
    name = "jmirror_web.exports"
    label = "exports"
    verbose_name = "Evidence exports"
    default_auto_field = "django.db.models.BigAutoField"
