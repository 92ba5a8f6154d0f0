"""Staff's view of archives, packages and test runs; runs are written by their service."""

from django.contrib import admin

from portal.packages.models import Archive, SourceIndex, SourcePackage, TestRun


@admin.register(Archive)
class ArchiveAdmin(admin.ModelAdmin):
    list_display = ["name", "url", "enabled", "queue_new_versions", "mail_maintainers"]


@admin.register(SourceIndex)
class SourceIndexAdmin(admin.ModelAdmin):
    list_display = ["archive", "suite", "component", "packages", "read_at", "error"]
    readonly_fields = ["validator", "read_at", "packages", "error"]


@admin.register(SourcePackage)
class SourcePackageAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "archive", "suite", "hwspec", "seen"]
    search_fields = ["name", "hwspec"]
    list_filter = ["archive"]


@admin.register(TestRun)
class TestRunAdmin(admin.ModelAdmin):
    list_display = ["id", "package", "hwspec", "stack", "trigger", "result", "regression"]
    list_filter = ["result", "regression", "trigger"]
    list_select_related = ["package", "stack"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in TestRun._meta.fields]
