"""One wrong declaration, chosen by MOUNTPROJECT_BAD_EVENTS: field, operation, model, rooms."""

import os

from broker.events import ModelEvents
from tests.mountproject.notes.models import Note

BAD = os.environ.get("MOUNTPROJECT_BAD_EVENTS")
ROOMS = [{"target": "bad"}]

if BAD == "field":
    class UnknownField(ModelEvents):
        model = Note
        rooms = ROOMS
        fields = ["title", "colour"]
elif BAD == "operation":
    class UnknownOperation(ModelEvents):
        model = Note
        rooms = ROOMS
        operations = ["created", "archived"]
elif BAD == "model":
    class NoModel(ModelEvents):
        rooms = ROOMS
elif BAD == "rooms":
    class NoRooms(ModelEvents):
        model = Note
