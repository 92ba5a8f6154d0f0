from django.urls import path

from portal.operations import views

app_name = "operations"
urlpatterns = [
    path("register/", views.host_register, name="host_register"),
    path("<slug:name>/inventory/", views.host_inventory, name="host_inventory"),
]
