"""The Django signals the broker sends (when it runs inside the backend's project).

``lifecycle``: a lifecycle event (``broker.lifecycle``), as ``event=<dict>``::

    from django.dispatch import receiver
    from broker.signals import lifecycle

    @receiver(lifecycle)
    def on_lifecycle(sender, event, **kwargs):
        if event["type"] == "offline":
            Agent.objects.filter(login=event["login"]).update(online=False)
"""

from __future__ import annotations

from django.dispatch import Signal

lifecycle = Signal()
