"""``python manage.py runoutboxrelay``: the transactional outbox's relay (``broker.relay``).

Run it in the backend's project (the one whose database holds the outbox rows, with the
``broker`` app installed and migrated), with the broker's BROKER_REDIS_URL and
BROKER_KEY_PREFIX: it publishes straight onto the broker's Redis. Run as many as you like on
PostgreSQL (one is active, the others stand by); one elsewhere. ``--once`` publishes what is
pending and exits (a cron job, a test). SIGTERM or SIGINT stops it after the current round.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS


class Command(BaseCommand):
    help = ("Publish the transactional outbox's committed rows in order (broker.relay); "
            "LISTEN/NOTIFY on PostgreSQL, polling elsewhere.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="the database alias whose outbox to relay")
        parser.add_argument("--batch", type=int, default=None,
                            help="rows per round (default BROKER_OUTBOX_BATCH)")
        parser.add_argument("--poll-interval", type=float, default=None,
                            help="seconds between looks (default BROKER_OUTBOX_POLL_INTERVAL)")
        parser.add_argument("--once", action="store_true",
                            help="relay the pending rows, then exit")

    def handle(self, *args: Any, **opts: Any) -> None:
        from broker.relay import Relay

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            relay = Relay(opts["database"], batch=opts["batch"],
                          poll_interval=opts["poll_interval"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if opts["once"]:
            while relay.lead() and relay.relay_batch() == relay.batch:
                pass
            relay.drop_connection()
        else:
            stop = threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            self.stdout.write(f"outbox relay on database {opts['database']!r}", ending="\n")
            self.stdout.flush()
            relay.run(stop)
        self.stdout.write(f"outbox relay: {relay.counts.published} published, "
                          f"{relay.counts.parked} parked")
