from django.urls import URLPattern, URLResolver, path

from jmirror_web.conversations import views

app_name = "conversations"
urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "sessions/<int:session_id>/conversations/",
        views.session_conversations,
        name="session",
    ),
    path("cases/<int:case_id>/conversations/", views.case_conversations, name="case"),
    path("cases/<int:case_id>/search/", views.case_search, name="search"),
]
