from django.contrib import admin
from django.urls import include, path

from portal import views

admin.site.site_header = "Porterbox portal administration"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("", include("portal.booking.urls")),
    path("hosts/", include("portal.operations.urls")),
    path("hosts/", include("portal.inventory.urls")),
    path("account/", include("portal.accounts.urls")),
    path("accounts/", include("allauth.urls")),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
