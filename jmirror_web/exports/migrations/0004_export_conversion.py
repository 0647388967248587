from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("exports", "0003_export_juniper_headers_dropped"),
    ]

    operations = [
        migrations.AddField(
            model_name="export",
            name="conversion",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
