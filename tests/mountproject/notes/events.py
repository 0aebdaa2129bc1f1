"""The notes app's event class (broker.events), found by the broker's autodiscovery:
tests/integration/test_event_classes.py."""

import os

from broker.events import ModelEvents

from .models import Note


class NoteEvents(ModelEvents):
    model = Note
    name = "note"
    fields = ["title", "status"]  # not the board: only the declared fields are sent
    operations = ["created", "updated"]  # a deleted note is not told

    def rooms(self, note):
        return [{"target": "note-events", "board": note.board}]

    def tags(self, note):
        return {"status": note.status}


if os.environ.get("MOUNTPROJECT_OUTBOX"):
    class OutboxNoteEvents(ModelEvents):
        """The event class form of the transactional outbox (tests/integration/
        test_outbox_relay.py)."""

        model = Note
        name = "note-outbox"
        fields = ["title"]
        operations = ["created"]
        outbox = True

        def rooms(self, note):
            return [{"target": "outbox-note-events", "board": note.board}]
