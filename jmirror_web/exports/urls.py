from django.urls import URLPattern, URLResolver, path

from jmirror_web.exports import views

app_name = "exports"
urlpatterns: list[URLPattern | URLResolver] = [
    path("sessions/<int:session_id>/export/", views.session_download, name="session"),
    path(
        "sessions/<int:session_id>/verify-files/",
        views.verify_session_files,
        name="verify_session_files",
    ),
    path("intercepts/<int:intercept_id>/export/", views.intercept_export, name="intercept"),
    path("cases/<int:case_id>/export/", views.case_export, name="case"),
    path("cases/<int:case_id>/exports/", views.case_exports, name="case_exports"),
    path("exports/<int:export_id>/", views.manifest_page, name="manifest"),
    path("exports/<int:export_id>/manifest.json", views.manifest_json, name="manifest_json"),
    path("verify/", views.verify_page, name="verify"),
]
