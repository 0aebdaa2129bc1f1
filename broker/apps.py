from django.apps import AppConfig


class BrokerConfig(AppConfig):
    name = "broker"
    verbose_name = "combroker"

    def ready(self) -> None:
        # Every log record of the process: the connection id as ``record.conn``, credentials
        # in URLs redacted (broker.logctx); under daphne, its access log redacted too.
        from . import daphne_ext, logctx

        logctx.install()
        daphne_ext.patch()
        # A malformed BROKER_HISTORY stops the process at start, not at the first trigger.
        from django.core.exceptions import ImproperlyConfigured

        from .conf import conf

        try:
            _ = conf().history_policy
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"BROKER_HISTORY: {exc}") from None
