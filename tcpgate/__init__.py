"""The TCP gate (``tcpgate.server`` accepts connections, ``tcpgate.transport`` frames each,
``tcpgate.readers`` reads its stream), its ``runtcpgate`` command (``tcpgate`` is a Django app
for that: ``tcpgate.apps``), and the Python client library (``tcpgate.client``).

``tcpgate`` sits above ``broker``: it imports the broker, the broker never imports it.
``tcpgate.client`` imports nothing from Django, so it can be used from any Python program.
"""
