from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.template.defaultfilters import pluralize

from portal.accounts import services
from portal.accounts.models import PartnerMembership, PartnerProject, SSHKey, User


class SSHKeyInline(admin.TabularInline):
    model = SSHKey
    extra = 0
    fields = ("key_type", "bits", "fingerprint", "comment", "created", "last_used")
    readonly_fields = fields
    can_delete = True

    def has_add_permission(self, request, obj=None):
        return False  # keys are added by their owner, through the validating parser


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "debian_member_source", "is_staff", "time_zone"]
    list_filter = ["debian_member_source", "is_staff", "is_active"]
    fieldsets = [
        *(BaseUserAdmin.fieldsets or ()),
        ("Portal", {"fields": ["debian_member_source", "time_zone"]}),
    ]
    inlines = [SSHKeyInline]
    actions = ["grant_debian_member", "withdraw_debian_member"]

    @admin.action(description="Grant the Debian member role")
    def grant_debian_member(self, request, queryset):
        for user in queryset:
            services.debian_member_set(user=user, source=User.MemberSource.STAFF)

    @admin.action(description="Withdraw the Debian member role")
    def withdraw_debian_member(self, request, queryset):
        for user in queryset:
            services.debian_member_set(user=user, source=User.MemberSource.NONE)


class PartnerMembershipInline(admin.TabularInline):
    model = PartnerMembership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(PartnerProject)
class PartnerProjectAdmin(admin.ModelAdmin):
    list_display = [
        "name", "state", "url", "share", "device_hours_per_month", "max_concurrent_devices",
        "max_walltime_hours", "created",
    ]  # fmt: skip
    list_filter = ["state"]
    search_fields = ["name", "url"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [PartnerMembershipInline]
    actions = ["approve"]  # a rejection says why: the applications page (projects:applications)

    def _decide(self, request, queryset, approve: bool):
        decided = sum(
            services.project_decide(project=project, actor=request.user, approve=approve)
            for project in queryset
        )
        skipped = queryset.count() - decided
        note = f" ({skipped} not waiting for a decision, left as they were)" if skipped else ""
        verb = "Approved" if approve else "Rejected"
        self.message_user(request, f"{verb} {decided} application{pluralize(decided)}{note}.")

    @admin.action(description="Approve the chosen applications")
    def approve(self, request, queryset):
        self._decide(request, queryset, approve=True)


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ["user", "key_type", "bits", "fingerprint", "comment", "created", "last_used"]
    search_fields = ["user__username", "fingerprint", "comment"]
    readonly_fields = ["user", "key_type", "blob", "bits", "fingerprint", "comment", "created"]

    def has_add_permission(self, request):
        return False
