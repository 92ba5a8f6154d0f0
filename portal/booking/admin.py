from django.contrib import admin, messages

from portal.booking import services
from portal.booking.models import Allocation, AuditEntry, BookingPolicy, Reservation
from portal.http import client_ip


@admin.register(BookingPolicy)
class BookingPolicyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return not BookingPolicy.objects.exists()  # one row

    def has_delete_permission(self, request, obj=None):
        return False


class AllocationInline(admin.TabularInline):
    model = Allocation
    extra = 0
    readonly_fields = ["accelerator", "start", "end", "active"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False  # through the booking service only


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "host", "start", "end", "state"]
    list_filter = ["state", "host"]
    search_fields = ["user__username", "host__name", "purpose"]
    readonly_fields = ["user", "host", "stack", "whole_host", "start", "end", "state", "created"]
    inlines = [AllocationInline]
    # A rejection says why and tells the owner: the approvals page (operations:approvals).
    actions = ["approve"]

    def has_add_permission(self, request):
        return False  # through the booking service only

    def has_delete_permission(self, request, obj=None):
        return False  # history is kept; cancel instead

    def _decide(self, request, queryset, approve: bool):
        for reservation in queryset:
            try:
                services.reservation_decide(
                    reservation=reservation, approve=approve, actor=request.user,
                    ip=client_ip(request),
                )  # fmt: skip
            except services.BookingError as exc:
                self.message_user(request, f"#{reservation.pk}: {exc.message}", messages.ERROR)

    @admin.action(description="Approve the selected reservations")
    def approve(self, request, queryset):
        self._decide(request, queryset, approve=True)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "actor", "ip", "action", "reservation"]
    list_filter = ["action"]
    search_fields = ["actor__username", "ip", "reservation__id"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
