"""``set_bootstrap_response`` as High-templar's suite calls it, on the project's AuthAPI stub
instead of WireMock (see ``tests/vendor/high_templar/__init__.py``): ``settings.AUTH_API`` is
the stub the broker under test asks."""

from tests.harness import Reply


def set_bootstrap_response(data):
    from settings import AUTH_API

    AUTH_API.default = Reply(403) if data is None else Reply(200, data)
