"""The old name of the fan-out entry points, kept while other branches still import it.

Fan-out lives in ``broker.fanout`` (one noun per module); import from there. This module
re-exports what the driver, the transports and the management commands used before the split
(``get_hub``, ``running_hub``, ``Hub``) and goes once nothing imports it.
"""

from __future__ import annotations

from .fanout.hub import Hub
from .fanout.running import get_hub, running_hub

__all__ = ["Hub", "get_hub", "running_hub"]
