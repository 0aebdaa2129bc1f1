from django.urls import include, path

from . import views
from .notes import views as notes

urlpatterns = [
    path("", views.home),
    path("ticket/", views.ticket),
    path("rt/", include("broker.urls")),
    path("notes/", notes.create),
    path("notes/rolled-back/", notes.rolled_back),
    path("notes/<int:pk>/", notes.update),
    path("notes/<int:pk>/delete/", notes.delete),
    path("outbox/", notes.outbox),
]
