"""The console pages, under /consoles/ (vaporsite/urls.py): plain URLs a script or a bookmark can open."""

from django.urls import path

from vms.consoles import views

urlpatterns = [
    path("<int:vm_id>/vnc/", views.vnc_page, name="console-vnc"),
    path("<int:vm_id>/serial/", views.serial_page, name="console-serial"),
    path("<int:vm_id>/serial/log", views.serial_log, name="console-serial-log"),
]
