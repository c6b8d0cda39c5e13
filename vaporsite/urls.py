from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

admin.site.site_header = "Vapor"
admin.site.site_title = "Vapor"
admin.site.index_title = "Virtual machines and ISO library"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/v1/virtualmachines/", include("isos.api.urls")),
    path("api/v1/virtualmachines/", include("vms.api.urls")),
    path("consoles/", include("vms.consoles.urls")),
]
