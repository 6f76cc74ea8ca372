// Ground truth for the linking-accuracy measurement only (tests/tests/demo.rs), loaded
// with `node --require`; the apps themselves stay as the lesson wrote them.
//
// It copies the incoming request's `x-request-id` onto every outgoing HTTP request made
// while serving it, following Node's own async context (AsyncLocalStorage), which knows
// which request an `await`ed call belongs to. tracer-agent does not link by this header
// (it only records it as `http.request.header.x-request-id`), so the spans say which
// request each one truly served, and the test compares that with the links the agent made.
"use strict";
const { AsyncLocalStorage } = require("node:async_hooks");
const http = require("node:http");

const current = new AsyncLocalStorage();

const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, req, ...rest) {
  if (event === "request") {
    return current.run(req.headers["x-request-id"], () => emit.call(this, event, req, ...rest));
  }
  return emit.call(this, event, req, ...rest);
};

for (const name of ["request", "get"]) {
  const original = http[name];
  http[name] = function (...args) {
    const req = original.apply(this, args);
    const id = current.getStore();
    if (id && !req.headersSent) {
      req.setHeader("x-request-id", id);
    }
    return req;
  };
}
