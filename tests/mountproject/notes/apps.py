from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "tests.mountproject.notes"
    label = "notes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # What a host project writes to put its model's changes on the broker.
        from broker.model_events import publish_model_events

        from .models import Note

        publish_model_events(
            Note,
            rooms=lambda note: [{"target": "notes", "board": note.board}],
            serializer=lambda note: {"title": note.title, "board": note.board},
        )
