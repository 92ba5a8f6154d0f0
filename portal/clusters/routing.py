"""Submission to a cluster partition: the route the jobs service takes for `partition`.

portal/jobs/services.py (below this app) checks a job as for the fleet, then asks this route
whether it fits the partition and binds it there in the transaction that creates it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from portal.accounts.models import PartnerProject, User
from portal.errors import ServiceError
from portal.inventory.models import DriverStack
from portal.jobs.models import Job

from .models import ClusterJob, ClusterStack, Partition, ProjectAccount


def find_partition(key: str) -> Partition | None:
    """ "cluster/partition" -> the partition of an enabled cluster, or None."""
    cluster, sep, name = key.partition("/")
    if not sep or not cluster or not name:
        return None
    return (
        Partition.objects.select_related("cluster")
        .filter(cluster__name=cluster, cluster__enabled=True, name=name)
        .first()
    )


class ClusterRoute:
    def choices(self, user: User) -> list[tuple[str, str]]:
        projects = PartnerProject.objects.filter(
            state=PartnerProject.State.APPROVED, partnermembership__user=user
        )
        clusters = ProjectAccount.objects.filter(project__in=projects).values("cluster")
        partitions = Partition.objects.filter(cluster__in=clusters, cluster__enabled=True)
        return [
            (
                str(p),
                f"{p} ({p.gpus_per_node} GPUs a node{', ' + p.gres_type if p.gres_type else ''})",
            )
            for p in partitions.select_related("cluster")
        ]

    def prepare(
        self,
        *,
        partition: str,
        project: PartnerProject,
        stack: DriverStack,
        count: int,
        walltime: timedelta,
        env: dict[str, str],
    ) -> Callable[[list[Job]], None]:
        found = find_partition(partition)
        if found is None:
            raise ServiceError(
                "bad_partition", f"No cluster partition {partition[:100]!r}.", "partition"
            )
        cluster = found.cluster
        if not ProjectAccount.objects.filter(cluster=cluster, project=project).exists():
            raise ServiceError(
                "no_account",
                f"{project} has no Slurm account on {cluster}; staff add one.",
                "partition",
            )
        if not ClusterStack.objects.filter(cluster=cluster, stack=stack).exists():
            raise ServiceError(
                "stack_missing", f"{cluster} does not offer the stack {stack.name}.", "stack"
            )
        if count > found.gpus_per_node:
            raise ServiceError(
                "bad_count",
                f"{found} has {found.gpus_per_node} GPUs a node; a job asks for at most that.",
                "count",
            )
        taken = sorted(n for n in env if str(n).startswith(("SLURM_", "PORTERBOX_")))
        if taken:
            raise ServiceError(
                "bad_env", f"Slurm or the portal sets {', '.join(taken)[:200]} itself.", "env"
            )
        if walltime > timedelta(hours=found.max_walltime_hours):
            raise ServiceError(
                "bad_walltime",
                f"{found} runs jobs of at most {found.max_walltime_hours} hours.",
                "walltime",
            )

        def bind(jobs: list[Job]) -> None:
            ClusterJob.objects.bulk_create(ClusterJob(job=job, partition=found) for job in jobs)

        return bind
