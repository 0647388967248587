from django.apps import AppConfig


class SecurityConfig(AppConfig):
    name = "jmirror_web.security"
    verbose_name = "Sign-in security"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from jmirror_web.security import lockout, sessions

        lockout.connect()
        user_logged_in.connect(sessions.signed_in, dispatch_uid="jmirror_session_refreshed")
