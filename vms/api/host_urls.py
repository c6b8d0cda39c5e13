"""Mounted under /api/v1/: /api/v1/hosts, /api/v1/hosts/{name}, /api/v1/hosts/{name}/check (no trailing slash)."""

from django.urls import path

from vms.api import host_views

urlpatterns = [
    path("hosts", host_views.HostCollectionView.as_view(), name="host-list"),
    path("hosts/<str:name>", host_views.HostItemView.as_view(), name="host-detail"),
    path("hosts/<str:name>/check", host_views.HostCheckView.as_view(), name="host-check"),
]
