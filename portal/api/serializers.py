from rest_framework import serializers

from portal.accounts.models import SSHKey
from portal.booking.models import Reservation
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.inventory.models import Accelerator, DriverStack, Host


class DriverStackSerializer(serializers.ModelSerializer):
    class Meta:
        model = DriverStack
        fields = ["name", "hwspecs", "chroot", "suite", "area", "description"]


class AcceleratorSerializer(serializers.ModelSerializer):
    host = serializers.SlugRelatedField(read_only=True, slug_field="name")

    class Meta:
        model = Accelerator
        fields = [
            "host",
            "index",
            "vendor",
            "model",
            "memory_mib",
            "uuid",
            "pci_bus_id",
            "arch",
            "retired",
        ]


class HostSerializer(serializers.ModelSerializer):
    stacks = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")
    accelerators = AcceleratorSerializer(many=True, read_only=True)
    hwspecs = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "name", "fqdn", "ssh_port", "architecture", "state", "access",
            "stacks", "hwspecs", "accelerators", "notes",
        ]  # fmt: skip

    def get_hwspecs(self, host) -> list[str]:
        return [str(spec) for spec in host.hwspecs()]


class SSHKeySerializer(serializers.ModelSerializer):
    public_key = serializers.CharField(write_only=True, help_text="One OpenSSH public key line.")

    class Meta:
        model = SSHKey
        fields = [
            "id", "public_key", "key_type", "bits", "fingerprint", "comment", "created",
            "last_used",
        ]  # fmt: skip
        read_only_fields = ["key_type", "bits", "fingerprint", "comment", "created", "last_used"]


class AllocationSerializer(serializers.Serializer):
    host = serializers.CharField(source="accelerator.host.name")
    index = serializers.IntegerField(source="accelerator.index")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class ReservationSerializer(serializers.ModelSerializer):
    host = serializers.SlugRelatedField(read_only=True, slug_field="name")
    stack = serializers.SlugRelatedField(read_only=True, slug_field="name")
    devices = serializers.SerializerMethodField()
    ssh = serializers.SerializerMethodField()

    class Meta:
        model = Reservation
        fields = [
            "id", "host", "stack", "whole_host", "devices", "purpose", "start", "end", "state",
            "last_error", "granted_at", "revoked_at", "ssh", "created", "updated",
        ]  # fmt: skip

    def get_devices(self, reservation) -> list[int]:
        return sorted(a.accelerator.index for a in reservation.allocations.all())

    def get_ssh(self, reservation) -> dict:
        return {
            "user": reservation.unix_user,
            "host": reservation.host.fqdn,
            "port": reservation.host.ssh_port,
            "command": reservation.ssh_command,
        }


class AwareDateTimeField(serializers.DateTimeField):
    """ISO 8601 with a UTC offset or Z: an API client's clock zone is not guessed."""

    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if isinstance(value, str) and not _has_offset(value):
            self.fail("naive")
        return moment

    default_error_messages = {
        "naive": "Give the time with a UTC offset or Z, as in 2026-11-23T10:00:00+01:00.",
    }


def _has_offset(text: str) -> bool:
    tail = text.strip()[10:]  # after the date
    return tail.endswith(("Z", "z")) or "+" in tail or "-" in tail


class ReservationCreateSerializer(serializers.Serializer):
    """Chosen devices (`host` with `devices` or `whole_host`), or a need (`count`, ...)."""

    host = serializers.SlugRelatedField(
        queryset=Host.objects.all(), slug_field="name", required=False
    )
    stack = serializers.SlugRelatedField(queryset=DriverStack.objects.all(), slug_field="name")
    start = AwareDateTimeField()
    end = AwareDateTimeField()
    devices = serializers.ListField(
        child=serializers.IntegerField(min_value=0), required=False, max_length=256
    )
    whole_host = serializers.BooleanField(default=False)
    count = serializers.IntegerField(min_value=1, max_value=64, required=False)
    hwspec = serializers.CharField(max_length=64, required=False, allow_blank=True)
    min_memory_gb = serializers.IntegerField(min_value=0, max_value=4096, required=False)
    purpose = serializers.CharField(max_length=200, required=False, allow_blank=True)

    def validate_hwspec(self, value):
        if not value.strip():
            return None
        try:
            return Hwspec.parse(value)
        except InvalidHwspec as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, data):
        chosen = bool(data.get("devices")) or data["whole_host"]
        if chosen and data.get("count"):
            raise serializers.ValidationError(
                "Give either devices (or whole_host) or a count, not both."
            )
        if not chosen and not data.get("count"):
            raise serializers.ValidationError("Give devices, whole_host, or a count of devices.")
        if chosen and not data.get("host"):
            raise serializers.ValidationError({"host": "Chosen devices need their host."})
        if data.get("devices") and data["whole_host"]:
            raise serializers.ValidationError("Give devices or whole_host, not both.")
        return data


class EndSerializer(serializers.Serializer):
    end = AwareDateTimeField()
