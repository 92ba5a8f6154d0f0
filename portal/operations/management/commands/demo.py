"""Fill the database with a believable demo inventory and a few users of each role.

In operations, the highest app but the API, as it fills every app below (bookings, telemetry).

Idempotent: rows are found by their natural keys and only created when missing, so a second
run changes nothing (and never resets what an admin edited in between).
"""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from portal.accounts.models import PartnerMembership, PartnerProject, User
from portal.inventory.models import Accelerator, DriverStack, Host

STACKS = [
    # name, hwspecs, chroot, area, description
    ("cuda-12", ["cuda"], "trixie-cuda-12", "non-free",
     "NVIDIA driver and CUDA 12 toolkit (nvidia-cuda-toolkit)."),
    ("rocm-6", ["rocm"], "trixie-rocm-6", "main",
     "Debian's ROCm 6 packages: hipcc, libamdhip64, rocm-smi."),
    ("oneapi", ["sycl"], "trixie-oneapi", "non-free",
     "Intel oneAPI DPC++ compiler and runtime for SYCL on Intel GPUs."),
    ("opencl", ["opencl"], "trixie-opencl", "main",
     "OpenCL ICD loader with Mesa rusticl, intel-opencl-icd and pocl."),
    ("xrt", ["fpga", "opencl"], "trixie-xrt", "contrib",
     "Xilinx Runtime (XRT) for Alveo cards; vendor shells installed on the host."),
]  # fmt: skip

GIB = 1024

HOSTS = [
    # name, state, access, stacks, notes, [(vendor, model, memory MiB, arch)] per device
    ("nv-h100-01", "active", "approval", ["cuda-12", "opencl"],
     "Donated for the Debian deep-learning team; ask staff for access.",
     [("nvidia", "NVIDIA H100 80GB HBM3", 81559, "sm_90")] * 4),
    ("nv-a100-01", "active", "open", ["cuda-12", "opencl"], "",
     [("nvidia", "NVIDIA A100-SXM4-40GB", 40960, "sm_80")] * 8),
    ("nv-t4-01", "maintenance", "open", ["cuda-12"], "Fan replacement this week.",
     [("nvidia", "Tesla T4", 15360, "sm_75")] * 2),
    ("amd-mi210-01", "active", "open", ["rocm-6", "opencl"], "",
     [("amd", "AMD Instinct MI210", 64 * GIB, "gfx90a")] * 2),
    ("amd-rx6700xt-01", "active", "open", ["rocm-6", "opencl"],
     "A consumer card, for testing ROCm packages on RDNA2.",
     [("amd", "AMD Radeon RX 6700 XT", 12 * GIB, "gfx1031")]),
    ("intel-flex170-01", "active", "open", ["oneapi", "opencl"], "",
     [("intel", "Intel Data Center GPU Flex 170", 16 * GIB, "dg2")] * 2),
    ("fpga-u280-01", "offline", "approval", ["xrt"], "Waiting for a new shell image.",
     [("fpga", "AMD Alveo U280", 8 * GIB, "xilinx_u280")]),
]  # fmt: skip

USERS = [
    # username, e-mail, Debian member source, staff
    ("alice", "alice@debian.org", "salsa", False),
    ("bob", "bob@debian.org", "staff", False),
    ("carol", "carol@example.org", "", False),
    ("dave", "dave@debian.org", "staff", True),
]


class Command(BaseCommand):
    help = "Load a demo inventory (hosts, accelerators, stacks) and demo users; idempotent."

    def handle(self, *args, **options):
        created = self._inventory_and_users()
        created += self._reservations()
        created += self._telemetry()
        self.stdout.write(f"demo: {created} object(s) created, the rest already there.")

    def _reservations(self) -> int:
        """A few bookings around now, so the timelines show something; only into an empty table."""
        from portal.booking.availability import ceil_to
        from portal.booking.models import BookingPolicy, Reservation
        from portal.booking.services import BookingError, reservation_create

        if Reservation.objects.exists():
            return 0
        step = BookingPolicy.current().granularity
        start = ceil_to(timezone.now(), step)
        hour = timedelta(hours=1)
        plans = [  # user, host, devices, from (hours from now), length (hours)
            ("alice", "nv-a100-01", [0, 1], 1, 4),
            ("bob", "nv-a100-01", [2], 0, 3),
            ("bob", "amd-mi210-01", None, 26, 8),
        ]
        made = 0
        for username, host_name, indices, offset, length in plans:
            host = Host.objects.filter(name=host_name).first()
            user = User.objects.filter(username=username).first()
            # A host of that name that was there before the demo may offer no stack.
            stack = host.stacks.first() if host is not None else None
            if host is None or user is None or stack is None:
                continue
            devices = [host.accelerators.get(index=i) for i in indices] if indices else None
            try:
                reservation_create(
                    user=user, host=host, stack=stack, accelerators=devices,
                    whole_host=devices is None, start=start + offset * hour,
                    end=start + (offset + length) * hour, purpose="demo",
                )  # fmt: skip
                made += 1
            except BookingError as exc:
                self.stderr.write(f"demo: {username} on {host_name}: {exc.message}")
        return made

    def _telemetry(self) -> int:
        """A day of readings every 10 minutes for one host, so its page has charts; only into
        an empty table (the loop writes real ones for registered hosts)."""
        import math

        from portal.inventory.models import DeviceSample

        host = Host.objects.filter(name="nv-a100-01").first()
        if host is None or DeviceSample.objects.exists():
            return 0
        now = timezone.now().replace(second=0, microsecond=0)
        rows = []
        for acc in host.accelerators.filter(index__lt=4):
            for step in range(144):
                at = now - timedelta(minutes=10 * step)
                busy = max(0.0, math.sin(step / 12 + acc.index)) * 95
                rows.append(
                    DeviceSample(
                        accelerator=acc, at=at, utilization_pct=round(busy, 1),
                        utilization_max_pct=round(busy, 1),
                        memory_used_mib=int(acc.memory_mib * busy / 120),
                        temperature_c=round(32 + busy * 0.45, 1), power_w=round(55 + busy * 3, 1),
                    )
                )  # fmt: skip
        DeviceSample.objects.bulk_create(rows)
        return len(rows)

    @transaction.atomic
    def _inventory_and_users(self) -> int:
        created = 0
        stacks = {}
        for name, hwspecs, chroot, area, description in STACKS:
            stacks[name], new = DriverStack.objects.get_or_create(
                name=name,
                defaults={"hwspecs": hwspecs, "chroot": chroot, "area": area,
                          "description": description},
            )  # fmt: skip
            created += new
        for name, state, access, stack_names, notes, devices in HOSTS:
            host, new = Host.objects.get_or_create(
                name=name,
                defaults={"fqdn": f"{name}.porterbox.debian.net", "state": state,
                          "access": access, "notes": notes},
            )  # fmt: skip
            created += new
            if new:
                host.stacks.set([stacks[s] for s in stack_names])
            for index, (vendor, model, memory, arch) in enumerate(devices):
                _, new = Accelerator.objects.get_or_create(
                    host=host,
                    index=index,
                    defaults={"vendor": vendor, "model": model, "memory_mib": memory,
                              "arch": arch, "pci_bus_id": f"0000:{0x17 + index * 0x10:02x}:00.0"},
                )  # fmt: skip
                created += new
        users = {}
        for username, email, member, staff in USERS:
            users[username], new = User.objects.get_or_create(
                username=username,
                defaults={"email": email, "debian_member_source": member, "is_staff": staff,
                          "time_zone": "Europe/Berlin" if username == "bob" else "UTC"},
            )  # fmt: skip
            if new:
                users[username].set_unusable_password()
                users[username].save(update_fields=["password"])
            created += new
        project, new = PartnerProject.objects.get_or_create(
            slug="open-speech",
            defaults={"name": "Open Speech Collective", "url": "https://example.org/open-speech",
                      "description": "Free speech recognition models trained on free data.",
                      "state": PartnerProject.State.APPROVED},
        )  # fmt: skip
        created += new
        _, new = PartnerMembership.objects.get_or_create(
            project=project, user=users["carol"],
            defaults={"role": PartnerMembership.Role.MANAGER},
        )  # fmt: skip
        created += new
        return created
