"""A minimal existing Django project that mounts the broker app (PROTOCOL §7 "Mounting"):
its own view at ``/``, the broker's HTTP routes under ``rt/``, the broker's WebSocket route in
its own ProtocolTypeRouter. Used by tests/integration/test_mounting.py."""
