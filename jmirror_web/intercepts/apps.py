from django.apps import AppConfig


class InterceptsConfig(AppConfig):
    name = "jmirror_web.intercepts"
    verbose_name = "Intercept records"
