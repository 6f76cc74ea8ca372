# Ground truth for the linking-accuracy measurement only (tests/tests/demo.rs), imported by
# Python at startup when this directory is on PYTHONPATH; app.py stays as the lesson wrote it.
#
# It copies the incoming request's `x-request-id` (Flask's request context) onto every
# outgoing `requests` call made while serving it. tracer-agent does not link by this
# header (it only records it as `http.request.header.x-request-id`), so the spans say which
# request each one truly served, and the test compares that with the links the agent made.
import flask
import requests.sessions

_request = requests.sessions.Session.request


def _request_with_id(self, method, url, *args, **kwargs):
    if flask.has_request_context():
        rid = flask.request.headers.get("x-request-id")
        if rid:
            headers = dict(kwargs.get("headers") or {})
            headers["x-request-id"] = rid
            kwargs["headers"] = headers
    return _request(self, method, url, *args, **kwargs)


requests.sessions.Session.request = _request_with_id
