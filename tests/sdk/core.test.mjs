// Unit tests of the SDK's pure parts: node --test tests/sdk/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  RevisionTracker,
  SseParser,
  backoffDelay,
  iceCredentials,
  parseIceServerLinks,
  payloadOf,
  retryAfterDelay,
  tokenRedirect,
  trickleFragment,
} from "../../media/static/sdk/core.js";

test("SSE: messages split anywhere across chunks, with every line ending", () => {
  const stream = 'id: 7\ndata: {"a":1}\n\n: heartbeat\n\nid: 8\r\ndata: x\r\ndata: y\r\n\r\nid: 9\rdata: z\r\r';
  for (let size = 1; size <= stream.length; size++) {
    const parser = new SseParser();
    const messages = [];
    for (let i = 0; i < stream.length; i += size) messages.push(...parser.feed(stream.slice(i, i + size)));
    assert.deepEqual(
      messages.map((m) => [m.id, m.data]),
      [["7", '{"a":1}'], ["8", "x\ny"], ["9", "z"]],
      `chunks of ${size}`,
    );
  }
});

test("SSE: comments, unknown fields and an unterminated message dispatch nothing", () => {
  const parser = new SseParser();
  assert.deepEqual(parser.feed(": only a comment\n\nretry: 10\nfoo\n\ndata: half"), []);
  assert.equal(parser.feed("\n\n")[0].data, "half");
});

test("SSE: an id with NUL is ignored, and the last id carries over to later messages", () => {
  const parser = new SseParser();
  const [first, second] = parser.feed("id: 3\ndata: a\n\nid: 4\0\ndata: b\n\n");
  assert.equal(first.id, "3");
  assert.equal(second.id, "3");
  assert.equal(second.event, "message");
});

test("revisions: a resumed stream repeats nothing and reports a gap", () => {
  const tracker = new RevisionTracker();
  const verdicts = [
    { revision: "3", snapshot: { session: {} } },
    { revision: "4", stateChanged: {} },
    { revision: "4", stateChanged: {} },
    { revision: "2", speechStarted: {} },
    { revision: "5", speechEnded: {} },
    { revision: "7", speechEnded: {} },
  ].map((event) => tracker.accept(event));
  assert.deepEqual(verdicts, ["deliver", "deliver", "duplicate", "duplicate", "deliver", "gap"]);
  assert.equal(tracker.lastRevision, 5);
});

test("revisions: an older snapshot is a duplicate, a resync snapshot moves forward", () => {
  const tracker = new RevisionTracker();
  tracker.accept({ revision: "9", snapshot: {} });
  assert.equal(tracker.accept({ revision: "9", snapshot: {} }), "duplicate");
  assert.equal(tracker.accept({ revision: "20", snapshot: { resync: true } }), "deliver");
  assert.equal(tracker.accept({ revision: "21", stateChanged: {} }), "deliver");
  assert.equal(tracker.lastRevision, 21);
});

test("revisions: the first event of a fresh session (revision omitted = 0) is delivered", () => {
  const tracker = new RevisionTracker();
  assert.equal(tracker.accept({ snapshot: {} }), "deliver");
  assert.equal(tracker.accept({ revision: "1", stateChanged: {} }), "deliver");
});

test("backoff: doubles up to the cap, always between half and all of it", () => {
  const low = (attempt) => backoffDelay(attempt, { baseMs: 100, maxMs: 1000, random: () => 0 });
  const high = (attempt) => backoffDelay(attempt, { baseMs: 100, maxMs: 1000, random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3, 4, 50].map(low), [50, 100, 200, 400, 500, 500]);
  for (const attempt of [0, 1, 2, 3, 4, 50]) {
    assert.ok(high(attempt) > low(attempt) && high(attempt) < 2 * low(attempt) + 1e-6);
  }
});

test("backoff: jitter spreads clients that were cut at once", () => {
  const delays = new Set(Array.from({ length: 50 }, () => Math.round(backoffDelay(5))));
  assert.ok(delays.size > 10, `only ${delays.size} distinct delays`);
});

test("Link: ICE servers with quoted, escaped and percent-encoded credentials", () => {
  const header =
    '<stun:stun.example.net:3478>; rel="ice-server", ' +
    '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="us%20er"; ' +
    'credential="p,w;\\"x"; credential-type="password", <https://example.net/>; rel="next"';
  assert.deepEqual(parseIceServerLinks(header), [
    { urls: "stun:stun.example.net:3478" },
    { urls: "turn:turn.example.net?transport=udp", username: "us er", credential: 'p,w;"x' },
  ]);
  assert.deepEqual(parseIceServerLinks(null), []);
});

test("payloadOf names the oneof a protobuf JSON event carries", () => {
  assert.equal(payloadOf({ revision: "2", speechEnded: { reason: "SILENCE" } }), "speechEnded");
  assert.equal(payloadOf({ revision: "2" }), null);
});

test("trickle fragments carry the ICE credentials, the mid and end-of-candidates", () => {
  const sdp = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\n";
  const body = trickleFragment({
    ...iceCredentials(sdp),
    candidates: [{ candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", sdpMid: "0" }],
    endOfCandidates: true,
  });
  assert.equal(
    body,
    "a=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" +
      "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n",
  );
});

test("redirect: the token follows to the same host, never from https to http, never elsewhere", () => {
  const allowed = (from, to, origins) => tokenRedirect(from, to, origins).allowed;
  assert.ok(allowed("https://hark.example/whip", "https://hark.example:8443/whip"));
  assert.ok(allowed("http://127.0.0.1:8000/whip", "http://127.0.0.1:9000/whip"));
  assert.ok(allowed("http://hark.example/whip", "https://hark.example/whip"));
  assert.ok(!allowed("https://hark.example/whip", "http://hark.example/whip"));
  assert.ok(!allowed("https://hark.example/whip", "http://node2.hark.example/whip", ["http://node2.hark.example"]));
  assert.ok(!allowed("https://hark.example/whip", "https://evil.example/whip"));
  assert.ok(!allowed("https://hark.example/whip", "https://node2.hark.example/whip"));
  assert.ok(allowed("https://hark.example/whip", "https://node2.hark.example/whip", ["https://node2.hark.example/"]));
  assert.ok(!allowed("https://hark.example/whip", "https://node2.hark.example:8443/whip", ["https://node2.hark.example"]));
});

test("redirect: a refusal says why, naming the origin and never the token", () => {
  const downgrade = tokenRedirect("https://hark.example/whip", "http://hark.example/whip");
  assert.match(downgrade.why, /https to http/);
  const foreign = tokenRedirect("https://hark.example/whip", "https://evil.example/x");
  assert.match(foreign.why, /https:\/\/evil\.example.*redirectOrigins/);
});

test("Retry-After: delta-seconds, an HTTP-date, garbage, kept between the backoff and the cap", () => {
  const now = Date.parse("Tue, 01 Dec 2026 01:00:00 GMT");
  const delay = (header, minMs = 500) => retryAfterDelay(header, { minMs, maxMs: 60000, now });
  assert.equal(delay("3"), 3000);
  assert.equal(delay(" 7 "), 7000);
  assert.equal(delay("Tue, 01 Dec 2026 01:00:20 GMT"), 20000);
  assert.equal(delay("Tue, 01 Dec 2026 00:59:00 GMT"), 500); // in the past
  assert.equal(delay("0"), 500);
  assert.equal(delay("soon"), 500);
  assert.equal(delay(null), 500);
  assert.equal(delay("99999999999"), 60000); // setTimeout would overflow
  assert.equal(delay("Fri, 31 Dec 9999 23:59:59 GMT"), 60000);
  assert.equal(delay("2", 5000), 5000); // never shorter than the backoff
});
