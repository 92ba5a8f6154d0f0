from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerSplitView

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
    path("account/notifications/", include("portal.notifications.urls")),
    path("projects/", include((project_urlpatterns, "projects"))),
    path("", include("portal.jobs.urls")),
    path("packages/", include("portal.packages.urls")),
    path("clusters/", include("portal.clusters.urls")),
    path("accounts/", include("allauth.urls")),
    # The API's docs: Swagger UI over the schema, served from this site (no CDN, no inline
    # script: its set-up is a script of its own, the split view's ?script). Swagger UI writes
    # <style> elements, so this page alone allows inline styles; scripts stay 'self' only.
    path(
        "api/docs/",
        csp_update({"style-src": ["'self'", "'unsafe-inline'"]})(
            SpectacularSwaggerSplitView.as_view(url_name="api:schema")
        ),
        name="api_docs",
    ),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]

handler400 = views.bad_request
