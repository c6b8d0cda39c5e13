"""Mounted under /api/v1/virtualmachines/ (the spec's paths, no trailing slash)."""

from django.urls import path

from isos.api import upload_views, views

urlpatterns = [
    path("isos", views.IsoCollectionView.as_view(), name="iso-list"),
    # Before isos/<iso_id>: "uploads" is no ISO id.
    path("isos/uploads", upload_views.IsoUploadCollectionView.as_view(), name="iso-upload-list"),
    path("isos/uploads/<str:upload_id>", upload_views.IsoUploadItemView.as_view(), name="iso-upload-detail"),
    path("isos/<str:iso_id>", views.IsoItemView.as_view(), name="iso-detail"),
    path("isos/<str:iso_id>/cancel", views.IsoCancelView.as_view(), name="iso-cancel"),
    path("isos/<str:iso_id>/retry", views.IsoRetryView.as_view(), name="iso-retry"),
    path("isos/<str:iso_id>/rehash", views.IsoRehashView.as_view(), name="iso-rehash"),
]
