// Follows Hark sessions' event streams with hark.js's own code, in Node (fetch, streams and
// EventTarget are the browser's): node follow.mjs TOKEN URL... prints one JSON line per URL with how
// ready() ended. Run by tests/integration/test_sdk_stream.py against a real Hark.
import { HarkSession } from "../../media/static/sdk/hark.js";

const [token, ...urls] = process.argv.slice(2);
for (const url of urls) {
  const pc = { close() {} }; // no media here: only the event stream is under test
  const session = new HarkSession({ url, etag: null, token, pc, iceServers: null });
  session._follow();
  const outcome = await session.ready({ timeoutMs: 20000 }).then(
    () => ({ resolved: true }),
    (error) => ({ code: error.code, reason: error.reason }),
  );
  console.log(JSON.stringify({ ...outcome, state: session.state, closeReason: session.closeReason }));
}
