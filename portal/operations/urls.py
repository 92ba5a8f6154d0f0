from django.urls import path

from portal.operations import views

app_name = "operations"
urlpatterns = [
    path("register/", views.host_register, name="host_register"),
    path("<slug:name>/inventory/", views.host_inventory, name="host_inventory"),
    path("<slug:name>/resume/", views.host_resume, name="host_resume"),
    path("<slug:name>/maintenance/", views.host_maintenance, name="host_maintenance"),
]
