"""HTTP routes of the broker app: include them in a project's urls.py."""

from django.urls import path, re_path

from . import views

urlpatterns = [
    path("trigger", views.trigger, name="broker-trigger"),
    path("trigger/", views.trigger, name="broker-trigger"),
    # The server API: only its operations' names, so a project that mounts these routes at
    # its root keeps its own /api/... routes.
    re_path(r"^api/(?P<operation>publish_to_users|broadcast|disconnect|unsubscribe|recheck"
            r"|history|connections)$", views.server_api, name="broker-api"),
    path("healthz", views.healthz, name="broker-healthz"),
    path("metrics", views.metrics_view, name="broker-metrics"),
]
