# The "typical service" of `cargo xtask bench`: a Flask app served by Flask's own threaded
# server, as in the demo's backend. `front` answers /api/data by calling `back` with
# requests (a new connection per call, as the demo does); `back` answers with a small JSON.
#
#   python3 flask_app.py front|back PORT [DOWNSTREAM_URL]
#
# With BENCH_OTEL_SDK=1 both apps are instrumented in-process with the OpenTelemetry Python
# SDK (Flask + requests instrumentation, batch span processor, OTLP/HTTP exporter configured
# by the standard OTEL_* variables): the in-code alternative the agent is compared with.
import logging
import os
import sys

from flask import Flask, jsonify
import requests

role, port = sys.argv[1], int(sys.argv[2])
downstream = sys.argv[3] if len(sys.argv) > 3 else None
app = Flask(role)

if os.environ.get("BENCH_OTEL_SDK") == "1":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": role}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument_app(app)
    RequestsInstrumentor().instrument()

# No access-log line per request, in every configuration: formatting it would cost more
# than some of what is measured.
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@app.route("/api/data")
def data():
    if downstream:
        rows = requests.get(downstream, timeout=10).json()
        return jsonify({"message": "front response", "rows": rows})
    return jsonify([{"id": i, "name": f"row {i}"} for i in range(3)])


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port, threaded=True)
