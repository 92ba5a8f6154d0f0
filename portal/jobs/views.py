"""Training job pages: the queue, submission, a job, its log, a project's usage, what was trained.

Views parse and render; submitting and cancelling are the job service's
(portal/jobs/services.py), the figures are the selectors' (portal/jobs/selectors.py).
"""

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.accounts.models import PartnerMembership, PartnerProject
from portal.jobs import scheduler, selectors, services
from portal.jobs.forms import JobForm, submittable_projects
from portal.jobs.models import Job
from portal.pages import confirm_first, refuse

WAITING_PER_PAGE = 100  # waiting jobs on a page of the queue
HOLDING_SHOWN = 200  # running and scheduled jobs listed (as many as devices at most); counted
HELD_BACK_SHOWN = 100  # jobs of projects not approved listed; they wait for staff, not a turn
TAIL_LINES = 200
HOUR = timedelta(hours=1)


def _with_hours(jobs):
    """The jobs, each with `walltime_hours` for the templates."""
    for job in jobs:
        job.walltime_hours = job.walltime / HOUR
    return jobs


@login_required
def queue(request):
    """The queue as the scheduler's last pass stored it: a constant number of queries and at
    most a page of waiting jobs, whatever the queue's length (nothing is searched here)."""
    page = Paginator(selectors.waiting_queue(), WAITING_PER_PAGE).get_page(request.GET.get("page"))
    shown = _with_hours(list(page.object_list))
    running, scheduled = selectors.running_jobs(), selectors.scheduled_jobs()
    mine = set(
        PartnerMembership.objects.filter(user=request.user).values_list("project_id", flat=True)
    )
    context = {
        "running": _with_hours(list(running[:HOLDING_SHOWN])),
        "running_count": running.count(),
        "scheduled": _with_hours(list(scheduled[:HOLDING_SHOWN])),
        "scheduled_count": scheduled.count(),
        "page": page,
        "waiting": [{"job": job, "estimated": selectors.is_estimated(job)} for job in shown],
        "held_back": list(selectors.held_back_jobs()[:HELD_BACK_SHOWN]),
        "mine": mine,
        "estimated": scheduler.ESTIMATED,
    }
    return render(request, "jobs/queue.html", context)


@login_required
def submit(request):
    if not submittable_projects(request.user).exists():
        # Not a member of an approved project: say how to become one.
        return render(request, "jobs/submit.html", {"form": None}, status=403)
    status = 200
    if request.method == "POST":
        form = JobForm(request.user, request.POST, request.FILES)
        if form.is_valid():
            try:
                job = services.job_submit(submitter=request.user, **form.submit_kwargs())
            except services.JobError as exc:
                status = refuse(request, exc, form)
            else:
                messages.success(request, "Queued.")
                return redirect("jobs:job_detail", pk=job.pk)
        else:
            status = 400
    else:
        form = JobForm(request.user, initial=_prefill(request))
    return render(request, "jobs/submit.html", {"form": form}, status=status)


def _prefill(request) -> dict:
    """?project=<slug> (from a project's page) chooses the project and its licences."""
    project = submittable_projects(request.user).filter(slug=request.GET.get("project", "")).first()
    if project is None:
        return {}
    return {
        "project": project,
        "code_licence": project.code_licence,
        "data_licence": project.data_licence,
    }


def _visible_job(request, pk) -> Job:
    job = get_object_or_404(
        Job.objects.select_related("project", "stack", "host", "submitter"), pk=pk
    )
    if not services.may_manage(request.user, job):
        raise Http404("No such job.")  # a job of someone else's project is not shown to exist
    return job


@login_required
def job_detail(request, pk):
    job = _visible_job(request, pk)
    holding = job.state in Job.HOLDING
    context = {
        "job": job,
        "log_tail": selectors.log_tail(job, TAIL_LINES),
        "log_size": job.log_dropped + len(job.log),  # where the page's live log goes on from
        "tail_lines": TAIL_LINES,
        "dropped_marker": dropped_marker(job) if job.log_dropped else "",
        "walltime_hours": job.walltime / HOUR,
        "device_hours": selectors.device_hours([job], timezone.now()).get(job.pk, 0.0),
        "waiting": job.state in Job.WAITING,
        "estimated": selectors.is_estimated(job),
        "finished": job.state in Job.FINISHED,
        "stopping": holding and job.stop_requested,
        "cancellable": job.state not in Job.FINISHED and not job.stop_requested,
    }
    return render(request, "jobs/job_detail.html", context)


def dropped_marker(job: Job) -> str:
    return (
        f"[porterbox: the log's first {job.log_dropped} characters are dropped; the portal "
        f"keeps its last {settings.JOBS_MAX_LOG_KB} KiB.]"
    )


@login_required
def job_log(request, pk):
    job = _visible_job(request, pk)
    text = job.log
    if job.log_dropped:  # said in the file too: its head is missing, not empty
        text = f"{dropped_marker(job)}\n{text}"
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.log"'
    return response


@login_required
def job_output(request, pk):
    job = _visible_job(request, pk)
    if not job.output:
        raise Http404("This job kept no output.")
    return FileResponse(job.output.open("rb"), as_attachment=True,
                        filename=f"job-{job.pk}-output.tar.gz")  # fmt: skip


@login_required
@require_POST
def job_cancel(request, pk):
    job = _visible_job(request, pk)
    running = job.state in (Job.State.STARTING, Job.State.RUNNING)
    asked = confirm_first(
        request,
        question=f"{'Stop' if running else 'Cancel'} the job {job.name} (#{job.pk})?",
        consequence="It gets SIGTERM, then SIGKILL after the grace time; what it has not "
        "written to $PORTERBOX_OUTPUT is lost."
        if running
        else "It leaves the queue.",
        button=f"Yes, {'stop' if running else 'cancel'} it",
        back=reverse("jobs:job_detail", args=[job.pk]),
    )
    if asked is not None:
        return asked
    try:
        job = services.job_cancel(job=job, actor=request.user)
    except services.JobError as exc:
        refuse(request, exc)
    else:
        if job.state == Job.State.CANCELLED:
            messages.success(request, "Cancelled.")
        else:
            messages.success(request, "Stopping: the job gets SIGTERM, then SIGKILL.")
    return redirect("jobs:job_detail", pk=job.pk)


@login_required
def project_usage(request, slug):
    project = get_object_or_404(PartnerProject, slug=slug)
    if not (
        request.user.is_staff
        or PartnerMembership.objects.filter(project=project, user=request.user).exists()
    ):
        raise Http404("No such project.")
    now = timezone.now()
    usage = selectors.project_usage(project, now)
    context = {"project": project, "usage": usage, "now": now}
    return render(request, "jobs/project_usage.html", context)


def trained(request):
    """Public: what the shared hardware trained, with the freedom of each model."""
    page = Paginator(selectors.trained_jobs(), 50).get_page(request.GET.get("page"))
    hours = selectors.device_hours(list(page.object_list), timezone.now())
    rows = [(job, hours.get(job.pk, 0.0)) for job in page.object_list]
    return render(request, "jobs/trained.html", {"page": page, "rows": rows})
