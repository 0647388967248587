from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, path

app_name = "console"
urlpatterns: list[URLPattern | URLResolver] = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
