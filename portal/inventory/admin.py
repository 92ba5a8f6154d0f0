from django.contrib import admin

from portal.inventory.models import Accelerator, DriverStack, Host, MaintenanceWindow


class AcceleratorInline(admin.TabularInline):
    model = Accelerator
    extra = 0


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name", "fqdn", "state", "access", "architecture", "last_seen", "key_mismatch",
        "drained_at", "drain_cause",
    ]  # fmt: skip
    # Written by registration (keys confirmed by staff) and by the reconcile loop (its health
    # checks drain a host; staff resume it with the action that portal/operations/admin.py adds,
    # or on the host's page).
    readonly_fields = [
        "last_seen", "last_error", "key_mismatch", "lease_until", "lease_owner",
        "health_problems", "drained_at", "drain_cause", "drain_reason", "telemetry",
        "telemetry_at",
    ]  # fmt: skip
    list_filter = ["state", "drain_cause", "access", "architecture", "stacks"]
    search_fields = ["name", "fqdn"]
    filter_horizontal = ["stacks"]
    inlines = [AcceleratorInline]


@admin.register(DriverStack)
class DriverStackAdmin(admin.ModelAdmin):
    list_display = ["name", "hwspecs", "chroot", "suite", "area"]
    list_filter = ["area", "suite"]


@admin.register(Accelerator)
class AcceleratorAdmin(admin.ModelAdmin):
    list_display = ["host", "index", "vendor", "model", "memory_mib", "arch", "retired"]
    list_filter = ["vendor", "retired", "host"]
    search_fields = ["model", "uuid", "host__name"]


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(admin.ModelAdmin):
    list_display = ["host", "start", "end", "reason", "created_by"]
    list_filter = ["host"]
    date_hierarchy = "start"
    readonly_fields = ["created_by", "created"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
