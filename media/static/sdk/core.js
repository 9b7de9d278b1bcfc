// The pure parts of hark.js: no DOM, no network, no clock. Each is unit-tested with `node --test`.

/** Incremental text/event-stream parser (the WHATWG HTML "event stream interpretation"). */
export class SseParser {
  constructor() {
    this._buffer = "";
    this._pendingCR = false;
    this._data = [];
    this._event = "";
    this._id = null;
    this.lastEventId = "";
  }

  /** Feed decoded text; returns the messages completed by it: {id, event, data}[]. */
  feed(text) {
    const messages = [];
    let chunk = text;
    if (this._pendingCR && chunk.startsWith("\n")) chunk = chunk.slice(1);
    this._pendingCR = false;
    this._buffer += chunk;
    let start = 0;
    for (let i = 0; i < this._buffer.length; i++) {
      const c = this._buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      const line = this._buffer.slice(start, i);
      if (c === "\r") {
        if (i + 1 === this._buffer.length) this._pendingCR = true;
        else if (this._buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
      const message = this._line(line);
      if (message) messages.push(message);
    }
    this._buffer = this._buffer.slice(start);
    return messages;
  }

  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    return null;
  }

  _dispatch() {
    if (this._data.length === 0) {
      this._event = "";
      return null;
    }
    const message = { id: this.lastEventId, event: this._event || "message", data: this._data.join("\n") };
    this._data = [];
    this._event = "";
    return message;
  }
}

/** The revision of a Hark event (protobuf JSON writes uint64 as a string; 0 is left out). */
export function revisionOf(event) {
  return Number(event.revision || 0);
}

/**
 * Keeps delivery exactly-once across reconnects. `accept(event)` answers
 * "deliver" (the next revision, or a snapshot that moves forward), "duplicate" (seen already) or
 * "gap" (events are missing: reconnect from `lastRevision`).
 */
export class RevisionTracker {
  constructor() {
    this.lastRevision = null;
  }

  accept(event) {
    const revision = revisionOf(event);
    const last = this.lastRevision;
    if (event.snapshot) {
      // A snapshot carries the current revision and summarises everything before it.
      if (last !== null && revision <= last && !event.snapshot.resync) return "duplicate";
      this.lastRevision = revision;
      return "deliver";
    }
    if (last !== null && revision <= last) return "duplicate";
    if (last !== null && revision > last + 1) return "gap";
    this.lastRevision = revision;
    return "deliver";
  }
}

/**
 * How long to wait before reconnect attempt `attempt` (0-based): exponential, capped, with jitter
 * ("equal jitter": half fixed, half random), so that many clients cut at once do not return at once.
 */
export function backoffDelay(attempt, { baseMs = 250, maxMs = 10000, random = Math.random } = {}) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** The `rel="ice-server"` links of a `Link` header (RFC 9725 section 4.6) as RTCIceServer objects. */
export function parseIceServerLinks(header) {
  const servers = [];
  if (!header) return servers;
  for (const link of splitOutsideQuotes(header, ",")) {
    const match = /^\s*<([^>]*)>(.*)$/s.exec(link);
    if (!match) continue;
    const params = {};
    for (const part of splitOutsideQuotes(match[2], ";")) {
      const eq = part.indexOf("=");
      if (eq < 0) continue;
      const name = part.slice(0, eq).trim().toLowerCase();
      let value = part.slice(eq + 1).trim();
      if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) {
        value = value.slice(1, -1).replace(/\\(.)/g, "$1");
      }
      params[name] = value;
    }
    if (!(params.rel || "").split(/\s+/).includes("ice-server")) continue;
    const server = { urls: match[1] };
    if (params.username !== undefined) server.username = decodeSafely(params.username);
    if (params.credential !== undefined) server.credential = decodeSafely(params.credential);
    servers.push(server);
  }
  return servers;
}

function decodeSafely(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function splitOutsideQuotes(text, separator) {
  const parts = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && quoted && i + 1 < text.length) {
      current += c + text[++i];
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === separator && !quoted) {
      parts.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  if (current.trim()) parts.push(current);
  return parts;
}

/** The name of an event's payload ("stateChanged", "speechStarted", …), or null. */
export const PAYLOADS = [
  "snapshot",
  "stateChanged",
  "listeningChanged",
  "heartbeat",
  "speechStarted",
  "speechEnded",
  "playbackStarted",
  "playbackFinished",
  "playbackInterrupted",
];

export function payloadOf(event) {
  return PAYLOADS.find((name) => event[name] !== undefined) || null;
}

/** A trickle-ice-sdpfrag body (RFC 8840) for candidates of one ICE session. */
export function trickleFragment({ ufrag, pwd, candidates, endOfCandidates }) {
  const lines = [];
  if (ufrag) lines.push(`a=ice-ufrag:${ufrag}`);
  if (pwd) lines.push(`a=ice-pwd:${pwd}`);
  const byMid = new Map();
  for (const candidate of candidates) {
    const mid = candidate.sdpMid ?? "0";
    if (!byMid.has(mid)) byMid.set(mid, []);
    byMid.get(mid).push(candidate.candidate);
  }
  if (byMid.size === 0 && endOfCandidates) byMid.set("0", []);
  for (const [mid, list] of byMid) {
    lines.push("m=audio 9 UDP/TLS/RTP/SAVPF 0", `a=mid:${mid}`);
    for (const line of list) lines.push(line.startsWith("a=") ? line : `a=${line}`);
    if (endOfCandidates) lines.push("a=end-of-candidates");
  }
  return lines.join("\r\n") + "\r\n";
}

/** The ICE username fragment and password of an SDP. */
export function iceCredentials(sdp) {
  const ufrag = /^a=ice-ufrag:(.+)$/m.exec(sdp);
  const pwd = /^a=ice-pwd:(.+)$/m.exec(sdp);
  return { ufrag: ufrag ? ufrag[1].trim() : null, pwd: pwd ? pwd[1].trim() : null };
}

/**
 * Whether the bearer token may be sent again to `finalUrl`, where a redirect from `originalUrl`
 * led (browsers drop it when a redirect crosses origins). Never over a downgrade from https to
 * http; otherwise only to the same host (any port) or to an origin the caller listed in
 * `allowedOrigins`. Answers `{allowed, why}`, `why` saying what was refused.
 */
export function tokenRedirect(originalUrl, finalUrl, allowedOrigins = []) {
  const from = new URL(originalUrl);
  const to = new URL(finalUrl);
  if (from.protocol === "https:" && to.protocol !== "https:") {
    return { allowed: false, why: `a redirect from https to ${to.protocol.slice(0, -1)} (${to.origin})` };
  }
  if (!["https:", "http:"].includes(to.protocol)) {
    return { allowed: false, why: `a redirect to a ${to.protocol} URL` };
  }
  if (to.hostname === from.hostname) return { allowed: true, why: "" };
  const listed = allowedOrigins.map((origin) => new URL(origin).origin);
  if (listed.includes(to.origin)) return { allowed: true, why: "" };
  return { allowed: false, why: `a redirect to another host (${to.origin}) not in redirectOrigins` };
}

/**
 * How long to wait after a response with `Retry-After` (RFC 9110 section 10.2.3: delta-seconds
 * or an HTTP-date), kept between `minMs` (the backoff delay: never a tight loop) and `maxMs`.
 * A missing or unreadable header gives `minMs`.
 */
export function retryAfterDelay(header, { minMs = 0, maxMs = 60000, now = Date.now() } = {}) {
  const text = (header || "").trim();
  let wait = minMs;
  if (/^\d+$/.test(text)) wait = Number(text) * 1000;
  else if (text) {
    const at = Date.parse(text);
    if (!Number.isNaN(at)) wait = at - now;
  }
  return Math.min(Math.max(wait, minMs), Math.max(minMs, maxMs));
}
