"""High-templar 3.1.0 as the baseline, configured for the bench (run in bench/.venv-ht).

High-templar's own ``high_templar.asgi`` hard-codes its Docker hosts and DEBUG logging to a
file, so this module builds the app the same way with the bench's settings: the auth API
(``GET <API_URL>bootstrap/``) and the local RabbitMQ (exchange ``hightemplar``, which it
declares and binds with routing key ``*``). Served by hypercorn, High-templar's own server
(a Quart app):

    HT_API_URL=http://127.0.0.1:P/api/ hypercorn -b 127.0.0.1:PORT bench.ht_app:application
"""

import logging
import os

from high_templar.main import create_app


class Settings:
    API_URL = os.environ["HT_API_URL"]
    API_SOCKET = None
    CONNECTION_HEADERS: dict = {}
    RABBITMQ = {
        "enabled": True,
        "exchange_name": "hightemplar",
        "username": os.environ.get("HT_RABBITMQ_USER", "guest"),
        "password": os.environ.get("HT_RABBITMQ_PASSWORD", "guest"),
        "host": os.environ.get("HT_RABBITMQ_HOST", "127.0.0.1"),
    }


application = create_app(Settings)
application.logger.setLevel(logging.WARNING)
logging.getLogger().setLevel(logging.WARNING)
