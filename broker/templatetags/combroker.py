"""``{% combroker_ticket %}``: a connection ticket for the page's user (``broker.tickets``).

``broker`` in INSTALLED_APPS and a template rendered with its request (``render(request,
...)``, ``template.render(context, request)``, or a ``request`` variable) is all it needs::

    {% load combroker %}
    <script type="module">
      import { connect } from "/static/combroker/combroker.js";
      const client = await connect("/ws/", { params: { ticket: "{% combroker_ticket %}" } });
    </script>

A ticket opens one connection: a reconnect needs a fresh one, from a view of the backend that
returns ``broker.tickets.mint(request)``, or another credential (combroker.js presents its
``params`` again as they are: docs/protocol.md "Connection tickets"). The ticket is base64url
and digits around two dots: nothing in it needs escaping in HTML, JavaScript or a URL. A
request without an identity raises ``MintRefused``.
"""

from __future__ import annotations

from typing import Any

from django import template

from ..tickets import MintRefused, mint

register = template.Library()


@register.simple_tag(takes_context=True)
def combroker_ticket(context: template.Context, ttl: float | None = None) -> str:
    """A fresh ticket for the template's request (``ttl``: seconds, BROKER_TICKET_TTL by
    default): the one a ``RequestContext`` was made with, else the ``request`` variable.
    Raises MintRefused without a request."""
    request: Any = getattr(context, "request", None) or context.get("request")
    if request is None:
        raise MintRefused("{% combroker_ticket %} needs the request in the template context")
    return mint(request, ttl=ttl)
