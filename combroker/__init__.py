"""The combroker sidecar: a Django project that runs the broker app on its own."""
