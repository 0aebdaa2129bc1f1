"""The broker's template tags (``{% load combroker %}``): ``broker.templatetags.combroker``."""
