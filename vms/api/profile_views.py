"""The signed-in user's SSH public keys: /api/v1/profile/ssh-keys. Each user sees and deletes only their own."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from projects.access import actor_from_request
from projects.choices import Via
from vaporsite.api import ErrorSerializer
from vms.api.cloud_init_serializers import SshKeyInSerializer, SshKeyOutSerializer
from vms.cloud_init_models import SshPublicKey
from vms.services import ssh_keys as services


class SshKeyCollectionView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="profile_ssh_keys_list", responses={200: SshKeyOutSerializer(many=True)})
    def get(self, request: Request) -> Response:
        keys = SshPublicKey.objects.filter(user=request.user.pk).order_by("name", "pk")
        return Response(SshKeyOutSerializer(keys, many=True).data)

    @extend_schema(
        operation_id="profile_ssh_keys_create",
        request=SshKeyInSerializer,
        responses={201: SshKeyOutSerializer, 400: ErrorSerializer, 409: ErrorSerializer},
        description="Keep an OpenSSH public key on your profile; cloud-init uses your keys when a request names none.",
    )
    def post(self, request: Request) -> Response:
        serializer = SshKeyInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row = services.ssh_key_create(
            name=serializer.validated_data["name"], key=serializer.validated_data["key"], actor=actor_from_request(request, Via.API)
        )
        return Response(SshKeyOutSerializer(row).data, status=status.HTTP_201_CREATED)


class SshKeyItemView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="profile_ssh_keys_destroy", responses={204: None, 404: ErrorSerializer})
    def delete(self, request: Request, key_id: int) -> Response:
        services.ssh_key_delete(key_id=key_id, actor=actor_from_request(request, Via.API))
        return Response(status=status.HTTP_204_NO_CONTENT)


urlpatterns = [
    path("ssh-keys", SshKeyCollectionView.as_view(), name="profile-ssh-keys"),
    path("ssh-keys/<int:key_id>", SshKeyItemView.as_view(), name="profile-ssh-key"),
]
