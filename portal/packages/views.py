"""Package test pages: the packages that declare a hwspec and their latest results, a
package's versions, stanzas, what fits and its history, a run, and latest.json as debci has it.

Views parse and render; queueing is runs.request_runs's, what fits runs.matching's, the latest
results results.latest_results's. A run is Debian's own work: every member who is logged in
sees it, its log and its artifacts; asking for a run is for Debian members.
"""

from debian.debian_support import Version
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.packages import results, runs
from portal.packages.forms import RunRequestForm
from portal.packages.models import SourcePackage, TestRun
from portal.pages import refuse

TAIL_LINES = 200
HISTORY_SHOWN = 50  # runs per hwspec x stack on a package's page


def _declares(package: SourcePackage) -> bool:
    return bool(package.hwspec) or any(s.get("hwspec") for s in package.tests)


@login_required
def package_list(request):
    """Like debci's package list: each package that declares a hwspec, its latest version and
    its latest result per hwspec x stack."""
    packages = [p for p in runs.latest_versions() if _declares(p)]
    latest = results.latest_results([p.name for p in packages])
    rows = [{"package": p, "results": sorted(latest.get(p.name, {}).items())} for p in packages]
    context = {"rows": rows, "may_request": request.user.is_debian_member}
    if request.user.is_debian_member:
        context["form"] = RunRequestForm("", [])
    return render(request, "packages/package_list.html", context)


def _hwspecs(fits: list[runs.StanzaFit]) -> list[str]:
    return list(dict.fromkeys(str(a.hwspec) for f in fits for a in f.alternatives))


def _package_page(request, name: str, form=None, status: int = 200):
    versions = list(SourcePackage.objects.filter(name=name).select_related("archive"))
    if not versions:
        raise Http404("No such package.")
    latest = max(versions, key=lambda p: Version(p.version))
    fits = runs.matching(latest)
    history: dict[tuple[str, str], list[TestRun]] = {}
    recorded = (
        TestRun.objects.filter(package__name=name)
        .select_related("package", "stack", "job")
        .defer("job__log")
        .order_by("-created", "-pk")
    )
    for run in recorded:
        shown = history.setdefault((run.hwspec, run.stack.name), [])
        if len(shown) < HISTORY_SHOWN:
            shown.append(run)
    if form is None and request.user.is_debian_member:
        form = RunRequestForm(name, _hwspecs(fits), initial={"version": latest.version})
    context = {
        "name": name,
        "latest": latest,
        "versions": versions,
        "fits": fits,
        "history": sorted(history.items()),
        "form": form,
        "may_request": request.user.is_debian_member,
    }
    return render(request, "packages/package_detail.html", context, status=status)


@login_required
def package_detail(request, name):
    return _package_page(request, name)


@login_required
@require_POST
def request_run(request, name=""):
    """Ask for runs of a version of the package (or of a .dsc at a URL); a member only."""
    if not request.user.is_debian_member:
        messages.error(request, "Only Debian members ask for test runs; ask staff for access.")
        if name:
            return _package_page(request, name, status=403)
        return redirect("packages:package_list")
    hwspecs = []
    if name:
        latest = SourcePackage.objects.filter(name=name).first()
        if latest is None:
            raise Http404("No such package.")
        hwspecs = _hwspecs(runs.matching(latest))
    form = RunRequestForm(name, hwspecs, request.POST)
    status = 400
    if form.is_valid():
        try:
            made = runs.request_runs(requester=request.user, **form.request_kwargs())
        except runs.RunRefused as exc:
            status = refuse(request, exc, form)
        else:
            messages.success(request, f"Queued {len(made)} run{'s' if len(made) > 1 else ''}.")
            if len(made) == 1:
                return redirect("packages:run", pk=made[0].pk)
            return redirect("packages:package_detail", name=made[0].package.name)
    if not name:
        for error in form.non_field_errors() + form.errors.get("dsc_url", []):
            messages.error(request, str(error))
        return redirect("packages:package_list")
    return _package_page(request, name, form=form, status=status)


def _run(pk) -> TestRun:
    return get_object_or_404(
        TestRun.objects.select_related("package", "package__archive", "stack", "job", "job__host"),
        pk=pk,
    )


@login_required
def run_detail(request, pk):
    run = _run(pk)
    job = run.job
    context = {
        "run": run,
        "job": job,
        "log_tail": "\n".join(job.log.splitlines()[-TAIL_LINES:]) if job else "",
        "tail_lines": TAIL_LINES,
        "status": results.status_of(run),
    }
    return render(request, "packages/run_detail.html", context)


@login_required
def run_log(request, pk):
    run = _run(pk)
    if run.job is None:
        raise Http404("This run has no job any more.")
    response = HttpResponse(run.job.log, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="test-run-{run.pk}.log"'
    return response


@login_required
def run_output(request, pk):
    run = _run(pk)
    if run.job is None or not run.job.output:
        raise Http404("This run kept no artifacts.")
    return FileResponse(run.job.output.open("rb"), as_attachment=True,
                        filename=f"test-run-{run.pk}-artifacts.tar.gz")  # fmt: skip


def latest_json(request, name):
    """debci's latest.json, per hwspec and stack: public, like debci's, for scripts and
    badges. A package never run answers an empty list."""
    if not SourcePackage.objects.filter(name=name).exists():
        return JsonResponse({"code": "not_found", "message": "No such package."}, status=404)
    latest = results.latest_results([name]).get(name, {})
    body = {"package": name, "results": [results.status_of(r) for _, r in sorted(latest.items())]}
    return JsonResponse(body)
