from django.contrib import admin

from portal.notifications.models import Notification, Webhook


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("created", "event", "channel", "target", "state", "attempts", "sent_at")
    list_filter = ("state", "channel", "event")
    search_fields = ("target", "subject")
    readonly_fields = [f.name for f in Notification._meta.fields]


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ("url", "user", "project", "created")
    exclude = ("secret",)
