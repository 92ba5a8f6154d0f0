from rest_framework import serializers

from portal.accounts.models import SSHKey
from portal.inventory.models import Accelerator, DriverStack, Host


class DriverStackSerializer(serializers.ModelSerializer):
    class Meta:
        model = DriverStack
        fields = ["name", "hwspecs", "chroot", "suite", "area", "description"]


class AcceleratorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Accelerator
        fields = ["index", "vendor", "model", "memory_mib", "uuid", "pci_bus_id", "arch", "retired"]


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
