from django.apps import AppConfig


class ClustersConfig(AppConfig):
    name = "portal.clusters"
    label = "clusters"
    verbose_name = "Slurm clusters"

    def ready(self) -> None:
        # The jobs app sits below this one: it takes cluster partitions through the route
        # this app installs (portal/jobs/services.py, cluster_route).
        from portal.clusters import routing
        from portal.jobs import services

        services.cluster_route = routing.ClusterRoute()
