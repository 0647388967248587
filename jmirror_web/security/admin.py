from django.contrib import admin
from django_otp.plugins.otp_totp.models import (  # type: ignore[import-untyped,unused-ignore]
    TOTPDevice,
)

# Two-factor devices are set up and removed by their owner (the "Two-factor sign-in" page)
# or reset from the shell (`manage.py two_factor --reset`), each audited. django-otp's
# admin would show a device's secret key and delete devices without an audit event.
admin.site.unregister(TOTPDevice)
