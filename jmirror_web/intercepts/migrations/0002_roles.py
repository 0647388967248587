"""The four roles as groups, with the model permissions the admin site checks. Who may
see a case's data is decided by jmirror_web.intercepts.access, not by these."""

from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

RECORDS = ["case", "caseassignment", "intercept", "router"]
CAPTURED = ["session", "capturefile"]

ROLE_PERMISSIONS = {
    "li-admin": [
        *(
            f"intercepts.{verb}_{model}"
            for model in RECORDS
            for verb in ("add", "change", "delete", "view")
        ),
        *(f"intercepts.view_{model}" for model in CAPTURED),
        "auth.view_user",
    ],
    "analyst": [],
    # Sessions and capture files are a case's metadata, which auditors do not see.
    "auditor": [
        *(f"intercepts.view_{model}" for model in RECORDS),
        "audit.view_auditevent",
    ],
    "sysadmin": [],
}


def create_roles(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    # Permissions are normally created after migrations; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True  # type: ignore[assignment]
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for name in names:
            app_label, codename = name.split(".")
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


def remove_roles(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_PERMISSIONS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("intercepts", "0001_initial"),
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
