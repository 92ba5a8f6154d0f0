from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from portal.accounts import services as account_services
from portal.accounts.models import SSHKey
from portal.accounts.sshkeys import InvalidKey, parse_public_key
from portal.api.errors import Conflict
from portal.api.serializers import DriverStackSerializer, HostSerializer, SSHKeySerializer
from portal.inventory import selectors
from portal.inventory.forms import HostFilterForm
from portal.inventory.models import DriverStack, Host


class HostViewSet(viewsets.ReadOnlyModelViewSet):
    """Hosts and their accelerators. Filters as on the host list page."""

    serializer_class = HostSerializer
    permission_classes = [permissions.AllowAny]
    lookup_field = "name"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Host.objects.none()
        form = HostFilterForm(self.request.query_params)
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            raise ValidationError({field: errors})
        kwargs = form.selector_kwargs()
        if self.action == "retrieve":
            kwargs["include_retired"] = True
        return selectors.host_list(**kwargs)


class DriverStackViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = DriverStackSerializer
    permission_classes = [permissions.AllowAny]
    queryset = DriverStack.objects.all()
    lookup_field = "name"


class SSHKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own SSH public keys."""

    serializer_class = SSHKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return SSHKey.objects.none()
        return self.request.user.ssh_keys.all()

    @extend_schema(responses={201: SSHKeySerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            key = parse_public_key(serializer.validated_data["public_key"])
        except InvalidKey as exc:
            raise ValidationError({"public_key": [exc.message]}, code="invalid_key") from None
        try:
            ssh_key = account_services.ssh_key_add(user=request.user, key=key)
        except account_services.KeyConflict as exc:
            raise Conflict(str(exc), code="key_registered") from None
        return Response(self.get_serializer(ssh_key).data, status=status.HTTP_201_CREATED)
