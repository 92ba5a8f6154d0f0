"""The Slurm clusters page: where jobs can go besides the fleet, and whether each answers."""

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.shortcuts import render

from portal.clusters.models import Cluster, ClusterJob, Partition, ProjectAccount


@login_required
def cluster_list(request):
    clusters = Cluster.objects.filter(enabled=True).prefetch_related(
        Prefetch("partitions", queryset=Partition.objects.order_by("name")), "stacks__stack"
    )
    mine = set(
        ProjectAccount.objects.filter(project__partnermembership__user=request.user).values_list(
            "cluster_id", flat=True
        )
    )
    jobs = (
        ClusterJob.objects.filter(job__project__partnermembership__user=request.user)
        .select_related("job", "partition__cluster")
        .order_by("-job_id")[:50]
    )
    context = {"clusters": clusters, "mine": mine, "jobs": jobs}
    return render(request, "clusters/cluster_list.html", context)
