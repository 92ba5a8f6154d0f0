from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from portal.accounts import services
from portal.accounts.forms import (
    MemberAddForm,
    ProfileForm,
    ProjectApplicationForm,
    SSHKeyAddForm,
)
from portal.accounts.models import FeedToken, PartnerMembership, PartnerProject
from portal.notifications.forms import WebhookForm
from portal.notifications.models import Webhook
from portal.pages import confirm_first, refuse


@login_required
def profile(request):
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST":
        if form.is_valid():
            form.save()
            messages.success(request, "Profile saved.")
            return redirect("accounts:profile")
        return render(request, "accounts/profile.html", _profile(request, form), status=400)
    return render(request, "accounts/profile.html", _profile(request, form))


def _profile(request, form=None, **shown) -> dict:
    return {
        "form": form or ProfileForm(instance=request.user),
        "token": Token.objects.filter(user=request.user).first(),
        "feed": FeedToken.objects.filter(user=request.user).first(),
        **shown,
    }


def _shown_once(request, **secret):
    """Show a new secret once, in this answer only: a flash message would keep it in a cookie
    (Django's message storage), readable by anything that sees the browser's cookies."""
    response = render(request, "accounts/profile.html", _profile(request, **secret))
    add_never_cache_headers(response)  # no-store: not kept by the browser or a proxy either
    return response


@login_required
@require_POST
def api_token_rotate(request):
    if Token.objects.filter(user=request.user).exists():
        asked = confirm_first(
            request,
            question="Replace your API token?",
            consequence="The old token stops working at once: scripts and the porterbox "
            "client that use it must be given the new one.",
            button="Yes, replace it",
            back=reverse("accounts:profile"),
        )
        if asked is not None:
            return asked
    Token.objects.filter(user=request.user).delete()
    token = Token.objects.create(user=request.user)
    return _shown_once(request, new_token=token.key)


@login_required
@require_POST
def feed_token_create(request):
    """A new calendar feed address, replacing the old one; only its hash is kept."""
    token = FeedToken.issue(request.user)
    url = request.build_absolute_uri(reverse("api:user-feed", args=[token]))
    return _shown_once(request, new_feed_url=url)


@login_required
@require_POST
def feed_token_revoke(request):
    asked = confirm_first(
        request,
        question="Revoke your calendar feed?",
        consequence="Calendars subscribed to its address stop getting your bookings.",
        button="Yes, revoke it",
        back=reverse("accounts:profile"),
    )
    if asked is not None:
        return asked
    if FeedToken.revoke(request.user):
        messages.success(request, "Calendar feed revoked: its address now answers 404.")
    else:
        messages.error(request, "You have no calendar feed.")
    return redirect("accounts:profile")


@login_required
def ssh_keys(request):
    form = SSHKeyAddForm(request.POST or None)
    status, errors = 200, []
    if request.method == "POST":
        if form.is_valid():
            result = services.ssh_keys_add_text(user=request.user, text=form.cleaned_data["keys"])
            for key in result.added:
                messages.success(request, f"Added {key.key_type} key {key.fingerprint}.")
            if not result.errors:
                return redirect("accounts:ssh_keys")
            errors = result.errors
        else:
            errors = [str(message) for message in form.errors["keys"]]  # an ErrorList's text
        # An empty form: what was pasted may be a private key, and is never echoed back.
        form, status = SSHKeyAddForm(), 400
    keys = request.user.ssh_keys.all()
    context = {"form": form, "keys": keys, "key_errors": errors}
    return render(request, "accounts/ssh_keys.html", context, status=status)


@login_required
@require_POST
def ssh_key_delete(request, key_id):
    asked = confirm_first(
        request,
        question="Remove this SSH key?",
        consequence="The hosts stop letting it in at their next pass, sessions open now included.",
        button="Yes, remove it",
        back=reverse("accounts:ssh_keys"),
    )
    if asked is not None:
        return asked
    if services.ssh_key_remove(user=request.user, key_id=key_id):
        messages.success(request, "Key removed.")
    else:
        messages.error(request, "No such key on your account.")
    return redirect("accounts:ssh_keys")


# -- Partner projects ---------------------------------------------------------------------------


def staff_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff decide on partner projects.")
        return view(request, *args, **kwargs)

    return wrapper


@login_required
def project_list(request):
    memberships = (
        PartnerMembership.objects.filter(user=request.user)
        .select_related("project")
        .order_by("project__name")
    )
    return render(request, "accounts/project_list.html", {"memberships": memberships})


@login_required
def project_apply(request):
    form = ProjectApplicationForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                project = services.project_apply(applicant=request.user, **form.cleaned_data)
            except services.ProjectError as exc:
                refuse(request, exc, form)
            else:
                messages.success(request, "Applied: staff will review your project.")
                return redirect("projects:detail", slug=project.slug)
        return render(request, "accounts/project_apply.html", {"form": form}, status=400)
    initial_email = {"contact_email": request.user.email}
    form = ProjectApplicationForm(initial=initial_email)
    return render(request, "accounts/project_apply.html", {"form": form})


@staff_required
def project_applications(request):
    applied = PartnerProject.objects.filter(state=PartnerProject.State.APPLIED).order_by("created")
    decided = (
        PartnerProject.objects.exclude(state=PartnerProject.State.APPLIED)
        .order_by("-created")
        .prefetch_related("partnermembership_set__user")[:20]
    )
    applied = applied.prefetch_related("partnermembership_set__user")
    context = {"applied": applied, "decided": decided}
    return render(request, "accounts/project_applications.html", context)


@staff_required
@require_POST
def project_decide(request, slug):
    project = get_object_or_404(PartnerProject, slug=slug)
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        messages.error(request, "Approve or reject.")
        return redirect("projects:applications")
    if decision == "reject":
        asked = confirm_first(
            request,
            question=f"Reject {project}?",
            consequence="Its members are told, with your reason; they cannot submit jobs.",
            button="Yes, reject it",
            back=reverse("projects:applications"),
        )
        if asked is not None:
            return asked
    try:
        done = services.project_decide(
            project=project, actor=request.user, approve=decision == "approve",
            reason=request.POST.get("reason", ""),
        )  # fmt: skip
    except services.ProjectError as exc:
        refuse(request, exc)
        return redirect("projects:applications")
    if done:
        messages.success(
            request, f"{project}: {project.get_state_display()}; its members are told."
        )
    else:
        messages.error(request, f"{project} was decided already: {project.get_state_display()}.")
    return redirect("projects:applications")


def _visible_project(request, slug) -> tuple[PartnerProject, PartnerMembership | None]:
    """A project its members and staff see; to anyone else it does not exist."""
    project = get_object_or_404(PartnerProject, slug=slug)
    membership = PartnerMembership.objects.filter(project=project, user=request.user).first()
    if membership is None and not request.user.is_staff:
        raise Http404("No such project.")
    return project, membership


def _render_project(
    request, project, membership, form=None, status=200, *, hook_form=None, secret=None
):
    memberships = (
        PartnerMembership.objects.filter(project=project)
        .select_related("user")
        .order_by("role", "user__username")
    )
    context = {
        "project": project,
        "membership": membership,
        "memberships": memberships,
        "manages": services.may_manage_project(request.user, project),
        "form": form or MemberAddForm(),
        "jobs": project.jobs.select_related("submitter").order_by("-queued_at", "-pk")[:20],
        "hook": Webhook.objects.filter(project=project).first(),
        "hook_form": hook_form or WebhookForm(),
        "new_secret": secret,
    }
    response = render(request, "accounts/project_detail.html", context, status=status)
    if secret:
        add_never_cache_headers(response)  # the secret is shown in this answer only
    return response


@login_required
def project_detail(request, slug):
    project, membership = _visible_project(request, slug)
    return _render_project(request, project, membership)


@login_required
@require_POST
def member_add(request, slug):
    project, membership = _visible_project(request, slug)
    if not services.may_manage_project(request.user, project):
        raise PermissionDenied("Only the project's managers add members.")
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            added = services.membership_add(
                project=project, actor=request.user, **form.cleaned_data
            )
        except services.ProjectError as exc:
            refuse(request, exc, form)
        else:
            messages.success(request, f"Added {added.user.username} as {added.role}.")
            return redirect("projects:detail", slug=project.slug)
    return _render_project(request, project, membership, form=form, status=400)


@login_required
@require_POST
def project_webhook(request, slug):
    """Managers set the project's webhook, which gets every event of the project (its jobs,
    its application's decision); a new one's secret is shown once. Empty URL: removed."""
    project, membership = _visible_project(request, slug)
    if not services.may_manage_project(request.user, project):
        raise PermissionDenied("Only the project's managers set its webhook.")
    if not request.POST.get("url", "").strip():
        if Webhook.objects.filter(project=project).delete()[0]:
            messages.success(request, "The project's webhook was removed.")
        return redirect("projects:detail", slug=project.slug)
    form = WebhookForm(request.POST)
    if not form.is_valid():
        return _render_project(request, project, membership, hook_form=form, status=400)
    hook, created = Webhook.objects.update_or_create(
        project=project, defaults={"url": form.cleaned_data["url"]}
    )
    if created:
        return _render_project(request, project, membership, secret=hook.secret)
    messages.success(request, "The project's webhook URL was saved; its secret is unchanged.")
    return redirect("projects:detail", slug=project.slug)


@login_required
@require_POST
def member_remove(request, slug, user_id):
    project, _ = _visible_project(request, slug)
    if not services.may_manage_project(request.user, project):
        raise PermissionDenied("Only the project's managers remove members.")
    asked = confirm_first(
        request,
        question=f"Remove this member from {project}?",
        consequence="They can no longer submit or cancel the project's jobs.",
        button="Yes, remove them",
        back=reverse("projects:detail", args=[project.slug]),
    )
    if asked is not None:
        return asked
    try:
        services.membership_remove(project=project, actor=request.user, user_id=user_id)
    except services.ProjectError as exc:
        refuse(request, exc)
    else:
        messages.success(request, "Removed.")
    return redirect("projects:detail", slug=project.slug)
