// The lesson's app.js with header forwarding gone wrong: instead of the incoming context,
// every call to the backend carries malformed trace headers (a broken propagator, a proxy
// that mangles them). A tracer must ignore them: no new trace, no join to a made-up one.
const express = require("express");
const axios = require("axios");

const GARBAGE_TRACEPARENTS = [
  "garbage",
  "00-00000000000000000000000000000000-0000000000000000-01", // all-zero ids
  "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
  "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // upper case
  "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // trace id too short
  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 with a 5th field
];
let calls = 0;

const app = express();

app.get("/", async (req, res) => {
  try {
    const garbage = GARBAGE_TRACEPARENTS[calls++ % GARBAGE_TRACEPARENTS.length];
    const response = await axios.get("http://backend:8080/api/data", {
      headers: {
        "traceparent": garbage,
        "tracestate": "=,=,=",
        "b3": "not-a-b3-header",
        "x-b3-traceid": "zzzzzzzzzzzzzzzz",
        "x-b3-spanid": "0000000000000000",
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
