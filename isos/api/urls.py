"""Mounted under /api/v1/virtualmachines/ (the spec's paths, no trailing slash)."""

from django.urls import path

from isos.api import views

urlpatterns = [
    path("isos", views.IsoCollectionView.as_view(), name="iso-list"),
    path("isos/<str:iso_id>", views.IsoItemView.as_view(), name="iso-detail"),
    path("isos/<str:iso_id>/cancel", views.IsoCancelView.as_view(), name="iso-cancel"),
    path("isos/<str:iso_id>/retry", views.IsoRetryView.as_view(), name="iso-retry"),
    path("isos/<str:iso_id>/rehash", views.IsoRehashView.as_view(), name="iso-rehash"),
]
