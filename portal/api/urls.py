from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from portal.api import feeds, views

router = DefaultRouter()
router.register("hosts", views.HostViewSet, basename="host")
router.register("accelerators", views.AcceleratorViewSet, basename="accelerator")
router.register("reservations", views.ReservationViewSet, basename="reservation")
router.register("stacks", views.DriverStackViewSet, basename="stack")
router.register("ssh-keys", views.SSHKeyViewSet, basename="ssh-key")
router.register("jobs", views.JobViewSet, basename="job")
router.register("test-runs", views.TestRunViewSet, basename="test-run")

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("availability/", views.availability_view, name="availability"),
    path("ansible-inventory/", views.ansible_inventory_view, name="ansible-inventory"),
    path("feeds/<str:token>.ics", feeds.UserFeedView.as_view(), name="user-feed"),
    path("hosts/<slug:name>/calendar.ics", feeds.HostFeedView.as_view(), name="host-feed"),
    path("packages/<str:name>/", views.package_view, name="package"),
    path("", include(router.urls)),
    # Anything else under /api/ is a JSON 404 like every API error, not the site's HTML page
    # (an id the router's pattern refuses, as /api/jobs/1.5/). Only paths ending in a slash:
    # the others still get APPEND_SLASH's redirect.
    re_path(r"^[\s\S]*/$", views.not_found_view),  # [\s\S]: a newline in a name too
]
