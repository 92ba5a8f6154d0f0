"""The admin's actions that run the loop's services on inventory's rows.

Inventory registers its models' admin without them (an app imports only the apps below it,
docs/decisions.md "App layers"); this module, above both, registers Host and MaintenanceWindow
again with the actions: resume a drained host, tell the users of a new maintenance window.
"""

from django.contrib import admin, messages
from django.db import transaction

from portal.inventory import admin as inventory_admin
from portal.inventory.models import Host, MaintenanceWindow
from portal.operations import health

admin.site.unregister(Host)
admin.site.unregister(MaintenanceWindow)


@admin.register(Host)
class HostAdmin(inventory_admin.HostAdmin):
    actions = ["resume_drained"]

    @admin.action(description="Resume the selected drained hosts")
    def resume_drained(self, request, queryset):
        resumed = [host.name for host in queryset if health.resume(host, request.user)]
        if resumed:
            self.message_user(request, f"Resumed: {', '.join(resumed)}.", messages.SUCCESS)
        skipped = queryset.count() - len(resumed)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected host{'s were' if skipped != 1 else ' was'} not drained; "
                "left as they were.",
                messages.WARNING,
            )


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(inventory_admin.MaintenanceWindowAdmin):
    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            # After the commit: the users are told of a window that exists, and no mail
            # goes out while the admin's transaction is open.
            transaction.on_commit(lambda: self._announce(request, obj))

    def _announce(self, request, window):
        told = health.maintenance_announce(window)
        self.message_user(
            request,
            f"{told} user{'s' if told != 1 else ''} with a reservation in the window told.",
            messages.SUCCESS,
        )
