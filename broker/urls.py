"""HTTP routes of the broker app: include them in a project's urls.py."""

from django.urls import path

from . import views

urlpatterns = [
    path("trigger", views.trigger, name="broker-trigger"),
    path("trigger/", views.trigger, name="broker-trigger"),
    path("healthz", views.healthz, name="broker-healthz"),
    path("metrics", views.metrics_view, name="broker-metrics"),
]
