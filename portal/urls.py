from django.contrib import admin
from django.urls import include, path

from portal import views
from portal.accounts.urls import project_urlpatterns
from portal.operations.metrics import metrics_endpoint

admin.site.site_header = "Porterbox portal administration"
# The admin logs in through allauth, like every page: its own form would skip the second
# factor (and the login rate limits).
admin.site.login = views.admin_login  # type: ignore[method-assign]  # replaced on purpose

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics_endpoint, name="metrics"),
    path("", include("portal.booking.urls")),
    path("hosts/", include("portal.operations.urls")),
    path("hosts/", include("portal.inventory.urls")),
    path("account/", include("portal.accounts.urls")),
    path("projects/", include((project_urlpatterns, "projects"))),
    path("", include("portal.jobs.urls")),
    path("accounts/", include("allauth.urls")),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]

handler400 = views.bad_request
