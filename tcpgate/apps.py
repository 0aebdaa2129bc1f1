"""The TCP gate as a Django app: installing it (``"tcpgate"`` in INSTALLED_APPS) is what gives a
project the ``runtcpgate`` command. It sits above ``broker`` (it imports the broker; the broker
never imports it), so the command lives here and not among the broker's."""

from django.apps import AppConfig


class TcpgateConfig(AppConfig):
    name = "tcpgate"
    verbose_name = "combroker TCP gate"
