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

        # tests/integration/test_outbox_relay.py: the same events through the transactional
        # outbox (at least once), to rooms of their own.
        import os as _os

        if _os.environ.get("MOUNTPROJECT_OUTBOX"):
            publish_model_events(
                Note, rooms=lambda note: [{"target": "outbox-notes", "board": note.board}],
                serializer=lambda note: {"title": note.title}, history=True, outbox=True,
                dispatch_uid="notes:outbox")

        # What a host project writes to hear who comes online, goes offline, joins and leaves
        # (broker.signals.lifecycle); here each event is appended to a file the test reads.
        import json
        import os

        from broker.signals import lifecycle

        path = os.environ.get("MOUNTPROJECT_LIFECYCLE_LOG")
        if path:
            def on_lifecycle(sender, event, **kwargs):
                with open(path, "a") as log:
                    log.write(json.dumps(event) + "\n")

            lifecycle.connect(on_lifecycle, weak=False)
