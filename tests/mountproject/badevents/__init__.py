"""An app whose event classes are declared wrong, installed only when MOUNTPROJECT_BAD_EVENTS
is set (tests/integration/test_event_classes.py): the process must not start."""
