from django.http import HttpRequest, HttpResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from the Django app; the proxy is at /v1/proxy/auto.")


urlpatterns = [path("", home)]
