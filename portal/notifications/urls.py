from django.urls import path

from portal.notifications import views

app_name = "notifications"
urlpatterns = [
    path("", views.settings_page, name="settings"),
    path("webhook/", views.webhook_save, name="webhook_save"),
    path("webhook/delete/", views.webhook_delete, name="webhook_delete"),
    path("failed/", views.failed, name="failed"),
    path("failed/<int:pk>/retry/", views.retry, name="retry"),
]
