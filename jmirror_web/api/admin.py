from django.contrib import admin
from rest_framework.authtoken.models import TokenProxy

# API tokens are created with `manage.py drf_create_token`; the admin would show every
# user's key to anyone with the admin's token permissions, who could then act as them.
admin.site.unregister(TokenProxy)
