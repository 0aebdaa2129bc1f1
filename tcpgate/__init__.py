"""The TCP gate (``tcpgate.server``) and the Python client library (``tcpgate.client``).

``tcpgate.client`` imports nothing from Django, so it can be used from any Python program.
"""
