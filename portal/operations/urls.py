from django.urls import path

from portal.operations import views

app_name = "operations"
urlpatterns = [
    path("register/", views.host_register, name="host_register"),
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/<int:pk>/", views.reservation_decide, name="reservation_decide"),
    path("<slug:name>/inventory/", views.host_inventory, name="host_inventory"),
    path("<slug:name>/drain/", views.host_drain, name="host_drain"),
    path("<slug:name>/resume/", views.host_resume, name="host_resume"),
    path("<slug:name>/maintenance/", views.host_maintenance, name="host_maintenance"),
    path("<slug:name>/maintenance/<int:pk>/", views.maintenance_edit, name="maintenance_edit"),
    path(
        "<slug:name>/maintenance/<int:pk>/delete/",
        views.maintenance_delete,
        name="maintenance_delete",
    ),
]
