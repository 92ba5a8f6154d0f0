from datetime import timedelta

import factory
from allauth.account.models import EmailAddress
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from portal.accounts.models import PartnerMembership, PartnerProject, User
from portal.inventory.models import Accelerator, DriverStack, Host

PASSWORD = "correct horse battery staple 42"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def verified_email(self, create, extracted, **kwargs):
        if create:
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)

    @factory.post_generation
    def mfa(self, create, extracted, **kwargs):
        """Staff have a second factor, as the portal requires (mfa=False: one who has none)."""
        if create and self.is_staff and extracted is not False:
            TOTP.activate(self, generate_totp_secret())


class PartnerProjectFactory(factory.django.DjangoModelFactory[PartnerProject]):
    class Meta:
        model = PartnerProject

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.Sequence(lambda n: f"project-{n}")
    state = PartnerProject.State.APPROVED


class PartnerMembershipFactory(factory.django.DjangoModelFactory[PartnerMembership]):
    class Meta:
        model = PartnerMembership

    project = factory.SubFactory(PartnerProjectFactory)
    user = factory.SubFactory(UserFactory)


class DriverStackFactory(factory.django.DjangoModelFactory[DriverStack]):
    class Meta:
        model = DriverStack
        django_get_or_create = ["name"]

    name = "cuda-12"
    hwspecs = ["cuda"]
    chroot = factory.LazyAttribute(lambda s: f"trixie-{s.name}")
    area = DriverStack.Area.NON_FREE


class HostFactory(factory.django.DjangoModelFactory[Host]):
    class Meta:
        model = Host

    name = factory.Sequence(lambda n: f"host{n}")
    fqdn = factory.LazyAttribute(lambda h: f"{h.name}.example.org")


class AcceleratorFactory(factory.django.DjangoModelFactory[Accelerator]):
    class Meta:
        model = Accelerator

    host = factory.SubFactory(HostFactory)
    index = factory.Sequence(lambda n: n)
    vendor = Accelerator.Vendor.NVIDIA
    model = "NVIDIA H100 80GB HBM3"
    memory_mib = 81559
    arch = "sm_90"


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "jobs.Job"

    project = factory.SubFactory(PartnerProjectFactory)
    submitter = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"train-{n}")
    script = "python3 train.py"
    stack = factory.SubFactory(DriverStackFactory)
    count = 1
    walltime = timedelta(hours=1)
    code_licence = "Apache-2.0"
    data_licence = "CC-BY-4.0"
    model_freedom = "free"


def tarball(files: dict[str, bytes] | None = None) -> bytes:
    """A real .tar.gz, as a job's input archive."""
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        for name, content in (files or {"train.py": b"print('training')\n"}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()
