// The lesson's app.js with its "Problem 2" fix: the trace headers of the incoming request
// are forwarded to the backend. The lesson lists Istio's B3 headers; `traceparent` and
// `tracestate` (W3C) are added, the headers an OpenTelemetry SDK or tracer-agent reads.
const express = require("express");
const axios = require("axios");

const app = express();

app.get("/", async (req, res) => {
  try {
    const response = await axios.get("http://backend:8080/api/data", {
      headers: {
        // ⭐ Передаем все trace headers из входящего request
        "traceparent": req.headers["traceparent"],
        "tracestate": req.headers["tracestate"],
        "x-request-id": req.headers["x-request-id"],
        "x-b3-traceid": req.headers["x-b3-traceid"],
        "x-b3-spanid": req.headers["x-b3-spanid"],
        "x-b3-parentspanid": req.headers["x-b3-parentspanid"],
        "x-b3-sampled": req.headers["x-b3-sampled"],
        "x-b3-flags": req.headers["x-b3-flags"],
      },
    });
    res.json({
      message: "Frontend response",
      backend_data: response.data,
    });
  } catch (error) {
    res.status(500).json({ error: error.message });
  }
});

app.listen(3000, () => {
  console.log("Frontend running on port 3000");
});
