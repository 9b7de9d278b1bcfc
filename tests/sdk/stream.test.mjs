// hark.js's event stream against local HTTP servers that fail the way proxies and networks do:
// node --test tests/sdk/ (tests/integration/test_sdk_stream.py runs it against a real Hark).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { getEventListeners } from "node:events";
import { createServer } from "node:http";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { HarkError, HarkSession } from "../../media/static/sdk/hark.js";

const FOLLOW_URL = new URL("follow.mjs", import.meta.url).href;
const FOLLOW = fileURLToPath(FOLLOW_URL);

/** A local server answering every request with `answer(request, response)`; counts requests. */
async function serving(answer) {
  const server = createServer((request, response) => {
    server.requests.push(`${request.method} ${request.url}`);
    answer(request, response);
  });
  server.requests = [];
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  server.base = `http://127.0.0.1:${server.address().port}`;
  return server;
}

function follow(url, options = {}) {
  const pc = { close() {} }; // no media: only the event stream is under test
  const session = new HarkSession({ url, etag: null, token: "t0ken", pc, iceServers: null, ...options });
  session._follow();
  return session;
}

test("a proxy answering 503 with an HTTP-date Retry-After is not hammered, and the loss is reported", async (t) => {
  const later = new Date(Date.now() + 1000).toUTCString();
  let deleted;
  const deleteArrived = new Promise((resolve) => (deleted = resolve));
  const proxy = await serving((request, response) => {
    if (request.method === "DELETE") return deleted(response.writeHead(503).end());
    response.writeHead(503, { "Retry-After": later }).end("upstream unavailable");
  });
  t.after(() => proxy.close());
  const session = follow(`${proxy.base}/whip/S1`, { connectionLostAfterMs: 2500 });
  const states = [];
  session.addEventListener("state", () => states.push(session.state));
  const error = await session.ready().then(
    () => assert.fail("ready() resolved"),
    (failure) => failure,
  );
  assert.ok(error instanceof HarkError);
  assert.equal(error.code, "CONNECTION_LOST");
  assert.match(error.reason, /could not reach Hark for 3 s/);
  assert.equal(session.state, "CLOSED");
  assert.equal(session.closeReason, "CONNECTION_LOST");
  assert.deepEqual(states, ["CLOSED"]);
  const opens = proxy.requests.filter((line) => line === "GET /whip/S1/events").length;
  // a Retry-After read as NaN meant no wait at all: thousands of requests in 2.5 s
  assert.ok(opens >= 1 && opens <= 10, `${opens} requests to the event stream`);
  await deleteArrived; // and it still tries to end the session, in case only events were cut
});

test("an unreachable Hark ends in CONNECTION_LOST, and reconnect waits leave no listener behind", async () => {
  const gone = await serving(() => {});
  const url = `${gone.base}/whip/S2`;
  await new Promise((resolve) => gone.close(resolve)); // nothing listens there any more
  const session = follow(url, { connectionLostAfterMs: 2000 });
  const signal = session._abort.signal;
  let most = 0;
  const sampler = setInterval(() => (most = Math.max(most, getEventListeners(signal, "abort").length)), 5);
  const error = await session.ready().catch((failure) => failure);
  clearInterval(sampler);
  assert.equal(error.code, "CONNECTION_LOST");
  assert.equal(session.closeReason, "CONNECTION_LOST");
  assert.ok(most <= 1, `${most} abort listeners at once`);
});

test("hark.js runs without a global CustomEvent (Node 18)", async (t) => {
  const hark = await serving((request, response) => response.writeHead(404).end("no session S3"));
  t.after(() => hark.close());
  // as Node 18 without a flag (and without relying on a flag this Node may not know)
  const withoutCustomEvent = `delete globalThis.CustomEvent; await import(${JSON.stringify(FOLLOW_URL)});`;
  const { stdout } = await promisify(execFile)(process.execPath, [
    "--input-type=module",
    "--eval",
    withoutCustomEvent,
    "--",
    FOLLOW,
    "t0ken",
    `${hark.base}/whip/S3`,
  ]);
  assert.deepEqual(JSON.parse(stdout), {
    code: 404,
    reason: "no session S3",
    state: "CLOSED",
    closeReason: "CLOSE_REASON_UNSPECIFIED",
  });
});
