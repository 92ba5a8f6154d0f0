from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from portal.api import views

router = DefaultRouter()
router.register("hosts", views.HostViewSet, basename="host")
router.register("accelerators", views.AcceleratorViewSet, basename="accelerator")
router.register("reservations", views.ReservationViewSet, basename="reservation")
router.register("stacks", views.DriverStackViewSet, basename="stack")
router.register("ssh-keys", views.SSHKeyViewSet, basename="ssh-key")
router.register("jobs", views.JobViewSet, basename="job")

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("availability/", views.availability_view, name="availability"),
    path("ansible-inventory/", views.ansible_inventory_view, name="ansible-inventory"),
    path("", include(router.urls)),
]
