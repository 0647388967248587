from django.urls import path
from rest_framework.routers import SimpleRouter

from jmirror_web.api import views
from jmirror_web.api.packets import SessionPacketsView
from jmirror_web.conversations import api as conversations
from jmirror_web.exports import api as exports

app_name = "api"

router = SimpleRouter()
router.register("cases", views.CaseViewSet, basename="case")
router.register("intercepts", views.InterceptViewSet, basename="intercept")
router.register("routers", views.RouterViewSet, basename="router")
router.register("sessions", views.SessionViewSet, basename="session")

urlpatterns = [
    *router.urls,
    path("sessions/<int:session_id>/pcap", exports.SessionPcapView.as_view(), name="session_pcap"),
    path("sessions/<int:session_id>/packets", SessionPacketsView.as_view(), name="session_packets"),
    path("cases/<int:case_id>/pcap", exports.CasePcapView.as_view(), name="case_pcap"),
    path("exports/<int:export_id>", exports.ExportManifestView.as_view(), name="export"),
    path(
        "sessions/<int:session_id>/conversations",
        conversations.SessionConversationsView.as_view(),
        name="session_conversations",
    ),
    path(
        "sessions/<int:session_id>/names",
        conversations.SessionNamesView.as_view(),
        name="session_names",
    ),
    path("cases/<int:case_id>/search", conversations.CaseSearchView.as_view(), name="case_search"),
]
