from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "jmirror_web.api"
    verbose_name = "JSON API"
