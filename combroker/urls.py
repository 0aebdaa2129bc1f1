from django.urls import include, path

from . import demo

urlpatterns = [
    path("", include("broker.urls")),
    path("", demo.demo_page, name="demo-page"),
    path("demo/api/bootstrap/", demo.demo_auth_api, name="demo-auth-api"),
    path("demo/trigger", demo.demo_trigger, name="demo-trigger"),
    path("com-broker", demo.com_broker_page, name="com-broker-page"),
    path("admin-console", demo.admin_console, name="admin-console"),
    path("admin-console/", demo.admin_console),
    path("static/<path:path>", demo.static_file),
]
