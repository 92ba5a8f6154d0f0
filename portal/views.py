from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import defaults

from portal import dashboard
from portal.inventory.models import Accelerator, Host


def home(request):
    hosts = Host.objects.exclude(state=Host.State.RETIRED)
    context: dict[str, object] = {
        "host_count": hosts.count(),
        "accelerator_count": Accelerator.objects.filter(host__in=hosts, retired=False).count(),
    }
    if request.user.is_authenticated:
        now = timezone.now()
        context["now"] = now
        context["mine"] = dashboard.mine(request.user, now)
        if request.user.is_staff:
            context["staff"] = dashboard.staff_work(now)
    return render(request, "home.html", context)


def admin_login(request, extra_context=None):
    """The admin's login page is allauth's, with its MFA stage; back to the admin after."""
    target = request.GET.get(REDIRECT_FIELD_NAME) or reverse("admin:index")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("admin:index")
    return redirect(f"{reverse('account_login')}?{urlencode({REDIRECT_FIELD_NAME: target})}")


def bad_request(request, exception):
    """Django's 400 (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields, a bad Host):
    JSON with a code and a message for the API, like every other API error; the page else."""
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 1024 / 1024
        body = {"code": "too_large", "message": f"The request body is over {limit:g} MiB."}
    else:
        body = {"code": "bad_request", "message": "The request is malformed."}
    return JsonResponse(body, status=400)


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")
