from django.urls import path

from portal.inventory import views

app_name = "inventory"
urlpatterns = [
    path("", views.host_list, name="host_list"),
    path("<slug:name>/", views.host_detail, name="host_detail"),
]
