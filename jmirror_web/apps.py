from django.contrib.admin.apps import AdminConfig


class JMirrorAdminConfig(AdminConfig):
    """Django's admin app with our site (:mod:`jmirror_web.admin_site`), which is
    entered by role."""

    default_site = "jmirror_web.admin_site.JMirrorAdminSite"
