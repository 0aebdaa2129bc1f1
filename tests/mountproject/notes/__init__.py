"""The host project's own app: a model whose changes reach WebSocket clients through
``broker.model_events`` (tests/integration/test_model_events.py)."""
