"""High-templar 3.1.0's network test suite, the part that triggers through RabbitMQ.

From https://github.com/CodeYellowBV/high-templar (commit 2f269cfa54b6f08c2103f1f25393cc216310c832,
"Release v3.1.0"), MIT licence (LICENSE, here). Unchanged: ``tests/__init__.py``,
``tests/test_messages.py``, ``tests/test_subscribe.py``, ``tests/utils/__init__.py`` and the
trigger helper ``tests/utils/rabbitmq.py`` (pika, publishing to the exchange ``hightemplar``
with routing key ``*``).

Ours: ``tests/utils/wiremock.py``. High-templar's own programs the auth API's
``GET /api/bootstrap/`` answer on a WireMock server at the fixed address
``http://wiremock:8080`` (a Java server in its docker-compose); this one has the same
``set_bootstrap_response(data)`` and sets the answer of the project's AuthAPI stub
(``tests.harness.AuthAPI``), which the broker under test asks.

What the suite imports as ``settings`` (``WS_URI``, ``RABBITMQ``) is made by the test that runs
it, tests/integration/test_amqp_source.py, for the broker and the RabbitMQ it started.
"""
