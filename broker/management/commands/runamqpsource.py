"""``python manage.py runamqpsource``: the AMQP trigger source on its own (broker.amqpsource).

It consumes BROKER_AMQP_QUEUE from BROKER_AMQP_URL and publishes each message as a trigger on
BROKER_REDIS_URL, exactly as a broker process does when BROKER_AMQP_IN_BROKER is on (the
default, and what docs/operations.md recommends: the source's state is then in every
process's ``/healthz`` and ``/metrics``). Run it instead (with BROKER_AMQP_IN_BROKER=false in
the broker processes) to consume with a number of processes of its own. Several may run: they
are competing consumers of the one queue. SIGTERM/SIGINT let the batch being published end,
then close the connection: what is not acknowledged goes back to RabbitMQ.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Consume High-templar triggers from RabbitMQ (BROKER_AMQP_URL) and publish them."

    def handle(self, *args: Any, **opts: Any) -> None:
        from broker.conf import conf

        c = conf()
        if not c.BROKER_AMQP_URL:
            raise CommandError("BROKER_AMQP_URL is not set: there is nothing to consume")
        if not c.BROKER_REDIS_URL:
            raise CommandError("BROKER_REDIS_URL is not set: triggers published on an "
                               "in-memory layer reach no broker process")
        asyncio.run(self.consume())

    async def consume(self) -> None:
        from broker.amqpsource import start_source, stop_source
        from broker.conf import conf

        source = start_source(conf())
        assert source is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.stdout.write(f"combroker AMQP source consuming {source.queue} "
                          f"(exchange {source.exchange})")
        self.stdout.flush()
        await stop.wait()
        await stop_source(conf().BROKER_SHUTDOWN_GRACE)
