"""HTTP routes of the broker app: include them in a project's urls.py."""

from django.urls import path, re_path

from . import views
from .serverapi import OPERATIONS

urlpatterns = [
    path("trigger", views.trigger, name="broker-trigger"),
    path("trigger/", views.trigger, name="broker-trigger"),
    # The server API: only its operations' names, so a project that mounts these routes at
    # its root keeps its own /api/... routes.
    re_path(rf"^api/(?P<operation>{'|'.join(OPERATIONS)})$", views.server_api,
            name="broker-api"),
    path("healthz", views.healthz, name="broker-healthz"),
    path("metrics", views.metrics_view, name="broker-metrics"),
]
