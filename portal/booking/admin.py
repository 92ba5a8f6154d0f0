from django.contrib import admin

from portal.booking.models import Allocation, BookingPolicy, Reservation


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
    readonly_fields = ["user", "host", "stack", "whole_host", "start", "end", "created"]
    inlines = [AllocationInline]
