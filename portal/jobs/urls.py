from django.urls import path

from portal.jobs import views

app_name = "jobs"
urlpatterns = [
    path("jobs/", views.queue, name="queue"),
    path("jobs/submit/", views.submit, name="submit"),
    path("jobs/<int:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<int:pk>/log/", views.job_log, name="job_log"),
    path("jobs/<int:pk>/output/", views.job_output, name="job_output"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("projects/<slug:slug>/usage/", views.project_usage, name="project_usage"),
    path("trained/", views.trained, name="trained"),
]
