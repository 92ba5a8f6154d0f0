"""Staff's view of training jobs: read them, cancel them; jobs are written by their service."""

from django.contrib import admin, messages

from portal.jobs import services
from portal.jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "project", "submitter", "state", "host", "count", "queued_at"]
    list_filter = ["state", "project"]
    search_fields = ["name", "project__name", "submitter__username"]
    date_hierarchy = "queued_at"
    list_select_related = ["project", "submitter", "host"]
    actions = ["cancel"]
    exclude = ["log"]  # long; shown on the job's page and downloadable there

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Job._meta.fields if f.name != "log"]

    def has_add_permission(self, request):
        return False  # through the submission page or the API, which check the project's rules

    @admin.action(description="Cancel (or stop) the chosen jobs")
    def cancel(self, request, queryset):
        for job in queryset:
            try:
                services.job_cancel(job=job, actor=request.user)
            except services.JobError as exc:
                self.message_user(request, f"{job}: {exc.message}", messages.WARNING)
