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
        # A malformed setting stops the process at start, not at the first use; the error
        # names the setting and the formats it accepts (broker.conf.SettingError).
        from django.core.exceptions import ImproperlyConfigured

        from .conf import SettingError, conf

        try:
            conf()
        except SettingError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        # Event classes (broker.events): every installed app's ``events`` module is imported
        # and each ModelEvents subclass connected; a bad declaration stops the process here.
        from django.utils.module_loading import autodiscover_modules

        from . import events

        autodiscover_modules("events")
        events.register_all()
