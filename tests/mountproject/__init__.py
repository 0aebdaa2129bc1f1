"""A minimal existing Django project that mounts the broker app (PROTOCOL §7 "Mounting"):
its own view at ``/``, the broker's HTTP routes under ``rt/``, the broker's WebSocket route in
its own ProtocolTypeRouter. Used by tests/integration/test_mounting.py.

Its app ``notes`` (a model in a SQLite database at $MOUNTPROJECT_DB) publishes its changes
with ``broker.model_events``: tests/integration/test_model_events.py."""
