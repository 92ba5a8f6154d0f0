from django.urls import path

from portal.accounts import views

app_name = "accounts"
urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("profile/token/", views.api_token_rotate, name="api_token_rotate"),
    path("profile/feed/", views.feed_token_create, name="feed_token_create"),
    path("profile/feed/revoke/", views.feed_token_revoke, name="feed_token_revoke"),
    path("keys/", views.ssh_keys, name="ssh_keys"),
    path("keys/<int:key_id>/delete/", views.ssh_key_delete, name="ssh_key_delete"),
]

# Partner projects, under /projects/ (portal/urls.py); the names before <slug> are reserved
# (services.RESERVED_SLUGS).
project_urlpatterns = [
    path("", views.project_list, name="list"),
    path("apply/", views.project_apply, name="apply"),
    path("applications/", views.project_applications, name="applications"),
    path("<slug:slug>/", views.project_detail, name="detail"),
    path("<slug:slug>/decide/", views.project_decide, name="decide"),
    path("<slug:slug>/members/", views.member_add, name="member_add"),
    path("<slug:slug>/webhook/", views.project_webhook, name="webhook"),
    path("<slug:slug>/members/<int:user_id>/remove/", views.member_remove, name="member_remove"),
]
