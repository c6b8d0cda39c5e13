from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from vaporsite.api_docs import RedocView, SchemaView, SwaggerView

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
    path("api/v1/", include("vms.api.host_urls")),  # issue 15: hypervisor hosts
    path("consoles/", include("vms.consoles.urls")),
]
