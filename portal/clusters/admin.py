"""Staff register Slurm clusters, their partitions, stacks and the partners' Slurm accounts."""

from django.contrib import admin

from portal.clusters.models import (
    Cluster,
    ClusterJob,
    ClusterStack,
    Partition,
    ProjectAccount,
    SlurmNode,
)


class PartitionInline(admin.TabularInline):
    model = Partition
    extra = 0


class ClusterStackInline(admin.TabularInline):
    model = ClusterStack
    extra = 0


class ProjectAccountInline(admin.TabularInline):
    model = ProjectAccount
    extra = 0


class SlurmNodeInline(admin.TabularInline):
    model = SlurmNode
    extra = 0


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["name", "login_host", "login_user", "enabled", "reachable", "checked_at"]
    readonly_fields = ["reachable", "last_error", "checked_at"]
    inlines = [PartitionInline, ClusterStackInline, ProjectAccountInline, SlurmNodeInline]


@admin.register(ClusterJob)
class ClusterJobAdmin(admin.ModelAdmin):
    """Read only: the cluster pass writes these."""

    list_display = ["job", "partition", "slurm_job_id", "slurm_state", "done", "submitted_at"]
    list_filter = ["done", "partition__cluster"]
    list_select_related = ["job__project", "partition__cluster"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in ClusterJob._meta.fields]

    def has_add_permission(self, request):
        return False
