from django.urls import path

from portal.packages import views

app_name = "packages"
urlpatterns = [
    path("", views.package_list, name="package_list"),
    path("runs/new/", views.request_run, name="request_run_dsc"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/log/", views.run_log, name="run_log"),
    path("runs/<int:pk>/artifacts/", views.run_output, name="run_output"),
    path("<str:name>/", views.package_detail, name="package_detail"),
    path("<str:name>/request/", views.request_run, name="request_run"),
    path("<str:name>/latest.json", views.latest_json, name="latest_json"),
]
