from rest_framework.routers import SimpleRouter

from jmirror_web.api import views

app_name = "api"

router = SimpleRouter()
router.register("cases", views.CaseViewSet, basename="case")
router.register("intercepts", views.InterceptViewSet, basename="intercept")
router.register("routers", views.RouterViewSet, basename="router")
router.register("sessions", views.SessionViewSet, basename="session")

urlpatterns = router.urls
