"""provisioning/slurm.py without a cluster: what it sends (validated argv, a quoted batch
script) and how it reads squeue's and scontrol's answers of Slurm 22.05 and 23.02+."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from provisioning.slurm import BatchJob, Login, parse_jobs, parse_reservations
from provisioning.transport import Target


def batch(**fields) -> BatchJob:
    values = {
        "name": "porterbox-j7", "partition": "gpu", "time_limit": timedelta(minutes=90),
        "work_dir": "/scratch/porterbox/porterbox-j7", "script": "python3 train.py\n",
        "gpus": 2, "account": "speech",
    }  # fmt: skip
    return BatchJob(**{**values, **fields})


def test_it_asks_slurm_for_the_jobs_resources_as_options():
    assert batch(gres_type="a100", comment="porterbox:job=7:project=speech").options() == [
        "--job-name=porterbox-j7", "--partition=gpu", "--time=90",
        "--chdir=/scratch/porterbox/porterbox-j7",
        "--output=/scratch/porterbox/porterbox-j7/log", "--open-mode=append",
        "--account=speech", "--gres=gpu:a100:2", "--comment=porterbox:job=7:project=speech",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [
        {"partition": "gpu --wrap=id"},
        {"account": "a;b"},
        {"work_dir": "/scratch/../etc"},
        {"work_dir": "relative/dir"},
        {"gres_type": "a100 x"},
        {"time_limit": timedelta(0)},
        {"comment": "two words"},
    ],
)
def test_it_refuses_a_value_slurm_or_the_shell_could_misread(fields):
    with pytest.raises(ValueError):
        batch(**fields).options()


def test_the_batch_script_quotes_every_value_it_adds(tmp_path):
    evil = "$(touch pwned); `touch pwned2`; 'quote"
    script = batch(
        work_dir=str(tmp_path), env=(("EPOCHS", evil),), script='printf "%s" "$EPOCHS"\n',
        setup="echo setup", git_url="",
    ).batch_script()  # fmt: skip
    (tmp_path / "input").mkdir()
    ran = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "setup\n" + evil
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_a_batch_script_read_from_a_file_carries_its_options_as_sbatch_lines():
    lines = batch().batch_script(directives=True).splitlines()

    assert lines[0] == "#!/bin/sh"
    options = batch().options()
    assert lines[1 : 1 + len(options)] == [f"#SBATCH {option}" for option in options]
    assert lines[1 + len(options)].startswith("# porterbox-j7")


def test_the_batch_script_refuses_slurms_and_the_portals_own_variables():
    with pytest.raises(ValueError):
        batch(env=(("SLURM_JOB_ID", "1"),)).batch_script()
    with pytest.raises(ValueError):
        batch(setup="module load x\nrm -rf ~").batch_script()


def test_a_login_refuses_a_slurm_conf_path_with_odd_characters():
    with pytest.raises(ValueError):
        Login(Target("h", 22, "u", "ssh-ed25519 AAAA"), slurm_conf="/etc/slurm.conf; id")


def test_it_reads_squeue_json_of_slurm_22_05():
    text = json.dumps({"jobs": [{
        "job_id": 12, "name": "porterbox-j7", "job_state": "FAILED",
        "state_reason": "NonZeroExitCode", "exit_code": 3 << 8, "submit_time": 1796300930,
        "start_time": 1796300933, "end_time": 1796300935,
    }, {
        "job_id": 13, "name": "x", "job_state": "PENDING", "exit_code": 0, "start_time": 0,
        "end_time": 0,
    }]})  # fmt: skip
    failed, pending = parse_jobs(text)

    assert (failed.job_id, failed.state, failed.exit_code, failed.signal) == (12, "FAILED", 3, None)
    assert failed.finished and not failed.running
    assert failed.elapsed == timedelta(seconds=2)
    assert failed.started == datetime.fromtimestamp(1796300933, UTC)
    assert (pending.started, pending.finished, pending.elapsed) == (None, False, timedelta(0))


def test_it_reads_squeue_json_of_slurm_23_02_and_later():
    text = json.dumps({"jobs": [{
        "job_id": 5, "name": "porterbox-j9", "job_state": ["CANCELLED"],
        "exit_code": {"status": ["SIGNALED"], "return_code": {"set": True, "number": 0},
                      "signal": {"id": {"set": True, "number": 15}, "name": "TERM"}},
        "start_time": {"set": True, "number": 1796300933},
        "end_time": {"set": True, "number": 1796300993},
    }]})  # fmt: skip
    (job,) = parse_jobs(text)

    assert (job.state, job.signal, job.elapsed) == ("CANCELLED", 15, timedelta(minutes=1))


def test_it_reads_scontrols_reservations():
    text = (
        "ReservationName=porterbox-vm-r3 StartTime=2026-12-03T12:39:17 "
        "EndTime=2026-12-03T12:59:17 Duration=00:20:00 Nodes=vm NodeCnt=1 "
        "Flags=MAINT,IGNORE_JOBS,SPEC_NODES Users=root State=INACTIVE\n"
    )
    (reservation,) = parse_reservations(text).values()

    assert reservation.name == "porterbox-vm-r3" and reservation.nodes == "vm"
    assert reservation.end - reservation.start == timedelta(minutes=20)
    assert reservation.start.tzinfo == UTC and "MAINT" in reservation.flags
