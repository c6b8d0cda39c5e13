from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from vaporsite.api_docs import RedocView, SchemaView, SwaggerView
from vms.api import host_views

admin.site.site_header = "Vapor"
admin.site.site_title = "Vapor"
admin.site.index_title = "Dashboard"


class FaviconView(RedirectView):
    """`/favicon.ico`, which browsers ask for on every page that names none (the API docs, the consoles)."""

    permanent = False

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        return static("vaporsite/favicon.ico")


urlpatterns = [
    # Vapor has no site besides the admin: "/" and the admin's "View site" lead to the dashboard.
    path("", RedirectView.as_view(url=reverse_lazy("admin:index")), name="home"),
    path("favicon.ico", FaviconView.as_view(), name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/virtualmachines/", include("isos.api.urls")),
    path("api/v1/virtualmachines/", include("vms.api.urls")),
    path("api/v1/profile/", include("vms.api.profile_views")),  # day two: cloud_init (SSH keys)
    path("api/v1/hosts", host_views.HostCollectionView.as_view(), name="host-list"),  # issue 15: hosts
    path("api/v1/hosts/<str:name>", host_views.HostItemView.as_view(), name="host-detail"),
    path("api/v1/hosts/<str:name>/check", host_views.HostCheckView.as_view(), name="host-check"),
    path("consoles/", include("vms.consoles.urls")),
]
