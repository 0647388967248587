from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, path

from jmirror_web.console import health, packets, two_factor, unclaimed, views
from jmirror_web.security import first_password
from jmirror_web.security.two_factor import SignInForm

app_name = "console"
urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(authentication_form=SignInForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/two-factor/", two_factor.two_factor_page, name="two_factor"),
    path("accounts/password/", first_password.password_page, name="password"),
    path("accounts/two-factor/qr.svg", two_factor.enrolment_qr, name="two_factor_qr"),
    path("cases/<int:case_id>/", views.case_page, name="case"),
    path("sessions/<int:session_id>/", views.session_page, name="session"),
    path("sessions/<int:session_id>/packets/<int:number>/", packets.packet_detail, name="packet"),
    path("sessions/<int:session_id>/packets/", packets.packet_jump, name="packet_jump"),
    path("health/", health.health_page, name="health"),
    path("unclaimed/", unclaimed.unclaimed_page, name="unclaimed"),
    path("unclaimed/<int:stream_id>/intercept/", unclaimed.create_intercept, name="map_unclaimed"),
]
