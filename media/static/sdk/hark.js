// hark.js: publish a microphone to Hark and follow its session, without readiness races.
// An ES module with no dependency and no build step: import it from /sdk/hark.js.
//
//   const session = await publish("https://hark.example/whip", { token });
//   await session.ready();            // the server decoded our audio: nobody sleeps
//   await session.startListening();
//
// Types: /sdk/hark.d.ts. Reference: the README's "Browser" section.

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
} from "./core.js";

export const VERSION = "0.1.0";

/** A refused request (`code` is the HTTP status), a closed session (`code` is the close
 * reason) or a wait that timed out (`code` is "TIMEOUT"); `reason` is Hark's own text. */
export class HarkError extends Error {
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.name = "HarkError";
    this.code = code;
    this.reason = reason;
  }
}

// Node 18 has no global CustomEvent (without a flag): an Event with a `detail` is all it takes.
const DetailEvent =
  globalThis.CustomEvent ??
  class DetailEvent extends Event {
    constructor(type, { detail = null, ...init } = {}) {
      super(type, init);
      this.detail = detail;
    }
  };

const DEFAULT_AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const HANG_UP_WAIT_MS = 3000;
const TRICKLE_ATTEMPTS = 5;
// Hark sends a heartbeat every few seconds (--heartbeat-interval, 5 s by default): a stream silent
// for this long is dead even if TCP has not noticed (a NAT that forgot the connection).
const STREAM_IDLE_MS = 45000;
// An event stream that has heard nothing from Hark for this long (every reconnect failing) gives
// up: the session is closed here with CONNECTION_LOST instead of retrying forever.
const CONNECTION_LOST_AFTER_MS = 120000;

/**
 * Publishes the microphone (or `options.stream`) to a WHIP endpoint. Resolves with the session
 * once Hark answered 201 (its id is known); rejects with a HarkError carrying the HTTP status and
 * Hark's reason otherwise. Nothing is left open after a rejection.
 */
export async function publish(whipUrl, options = {}) {
  const { token = null, stream = null, iceServers = null, audio = {} } = options;
  const { redirectOrigins = [], connectionLostAfterMs = CONNECTION_LOST_AFTER_MS } = options;
  const media =
    stream || (await navigator.mediaDevices.getUserMedia({ audio: { ...DEFAULT_AUDIO, ...audio } }));
  const ownsStream = !stream;
  const tracks = media.getAudioTracks();
  const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
  try {
    if (tracks.length === 0) throw new HarkError("NO_AUDIO", "the stream has no audio track");
    for (const track of tracks) pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
    const link = await negotiate(pc, new URL(whipUrl, globalThis.location?.href).href, {
      token,
      linkServers: !iceServers,
      redirectOrigins,
    });
    const session = new HarkSession({
      url: link.url,
      etag: link.etag,
      token,
      pc,
      iceServers,
      redirectOrigins,
      connectionLostAfterMs,
    });
    session._ownStream(media, ownsStream);
    session._follow();
    return session;
  } catch (error) {
    pc.close();
    if (ownsStream) for (const track of media.getTracks()) track.stop();
    throw error;
  }
}

/**
 * The offer/answer exchange WHIP and WHEP share: POST the offer (following a 307, keeping the
 * token), apply the `Link` ICE servers unless the caller chose some, then trickle candidates with
 * PATCH and `If-Match`. The offer is sent before gathering starts, so the servers Hark announces
 * are the ones gathered with.
 */
async function negotiate(pc, endpoint, { token, linkServers, redirectOrigins }) {
  const offer = await pc.createOffer();
  const response = await postOffer(endpoint, offer.sdp, token, redirectOrigins);
  const answer = await response.text();
  if (response.status !== 201) throw new HarkError(response.status, answer.trim() || response.statusText);
  const location = response.headers.get("Location");
  if (!location) throw new HarkError(response.status, "the answer has no Location header");
  const url = new URL(location, response.url || endpoint).href;
  const etag = response.headers.get("ETag");
  const servers = parseIceServerLinks(response.headers.get("Link"));
  if (linkServers && servers.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: servers });
  const trickle = new Trickle(url, etag, token, iceCredentials(offer.sdp));
  pc.addEventListener("icecandidate", (event) => trickle.add(event.candidate));
  try {
    await pc.setLocalDescription(offer);
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  } catch (error) {
    trickle.stopped = true;
    request(url, { method: "DELETE" }, token).catch(() => {}); // Hark made it: do not leave it
    throw error;
  }
  return { url, etag };
}

/**
 * A browser follows a 307 by itself but drops `Authorization` when the redirect crosses origins
 * (Fetch standard), so the owner answers 401; the final URL is known then, and the offer is sent
 * there again with the token, unless that would hand it to another host or over plain http
 * (tokenRedirect). `redirect: "manual"` cannot help: its Location is unreadable.
 */
async function postOffer(endpoint, sdp, token, redirectOrigins = []) {
  const send = (url) =>
    request(url, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: sdp }, token);
  const response = await send(endpoint);
  if (response.status !== 401 || !response.redirected || !token) return response;
  const { allowed, why } = tokenRedirect(endpoint, response.url, redirectOrigins);
  if (!allowed) {
    await response.body?.cancel();
    throw new HarkError("REDIRECT_REFUSED", `the token was not sent again after ${why}`);
  }
  return send(response.url);
}

async function request(url, init, token, keepalive = false) {
  const headers = { ...(init.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    return await fetch(url, { ...init, headers, keepalive, cache: "no-store" });
  } catch (error) {
    throw new HarkError(0, `could not reach ${new URL(url).origin}: ${error.message || error}`);
  }
}

async function refusal(response) {
  const text = (await response.text()).trim();
  return new HarkError(response.status, text || response.statusText);
}

/** Candidates are PATCHed in order, batched while a PATCH is on its way. */
class Trickle {
  constructor(url, etag, token, credentials) {
    this._url = url;
    this._etag = etag;
    this._token = token;
    this._credentials = credentials;
    this._queue = [];
    this._ended = false;
    this._sending = null;
    this.stopped = false;
  }

  add(candidate) {
    if (this.stopped) return;
    if (candidate && candidate.candidate) this._queue.push(candidate);
    else if (!candidate) this._ended = true;
    else return;
    if (!this._sending) this._sending = this._flush().finally(() => (this._sending = null));
  }

  async _flush() {
    while (!this.stopped && (this._queue.length || this._ended)) {
      const candidates = this._queue.splice(0);
      const endOfCandidates = this._ended;
      this._ended = false;
      const body = trickleFragment({ ...this._credentials, candidates, endOfCandidates });
      const headers = { "Content-Type": "application/trickle-ice-sdpfrag" };
      if (this._etag) headers["If-Match"] = this._etag;
      if (!(await this._send(headers, body))) return; // its event stream says why
      if (endOfCandidates) return;
    }
  }

  // A lost PATCH would lose candidates and so, maybe, the connection: a failure on the way (a
  // reused connection that was cut, a 5xx, a 429) is retried; a refusal (404, 412…) is final.
  async _send(headers, body) {
    for (let attempt = 0; attempt < TRICKLE_ATTEMPTS && !this.stopped; attempt++) {
      if (attempt) await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt - 1)));
      try {
        const response = await request(this._url, { method: "PATCH", headers, body }, this._token);
        if (response.ok) return true;
        if (response.status < 500 && response.status !== 429) return false;
      } catch {
        // unreachable for now: try again
      }
    }
    return false;
  }
}

const READY = "READY";
const CLOSED = "CLOSED";
const CONNECTION_LOST = "CONNECTION_LOST";

/** One published session: its state, listening flag and events, mirrored from Hark's SSE. */
export class HarkSession extends EventTarget {
  constructor({
    url,
    etag,
    token,
    pc,
    iceServers,
    redirectOrigins = [],
    connectionLostAfterMs = CONNECTION_LOST_AFTER_MS,
  }) {
    super();
    this.url = url;
    this.id = url.split("/").pop();
    this.state = "CONNECTING";
    this.listening = false;
    this.closeReason = null;
    this.closeDetail = "";
    this.revision = 0;
    this.peerConnection = pc;
    this._etag = etag;
    this._token = token;
    this._iceServers = iceServers;
    this._redirectOrigins = redirectOrigins;
    this._connectionLostAfterMs = connectionLostAfterMs;
    this._lastContact = Date.now();
    this._players = new Set();
    this._tracker = new RevisionTracker();
    this._failure = null;
    this._abort = new AbortController();
    this._onPageHide = () => this._deleteOnPageHide();
    globalThis.addEventListener?.("pagehide", this._onPageHide);
  }

  /** Resolves when Hark decoded the first audio (READY); rejects with a HarkError on CLOSED
   * (code: the close reason) or after `timeoutMs` (code: "TIMEOUT"). */
  ready({ timeoutMs = 0 } = {}) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        const failure = this._readyFailure();
        if (this.state !== READY && !failure) return false;
        this.removeEventListener("state", check);
        clearTimeout(timer);
        if (failure) reject(failure);
        else resolve(this);
        return true;
      };
      if (check()) return;
      this.addEventListener("state", check);
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          this.removeEventListener("state", check);
          reject(new HarkError("TIMEOUT", `session ${this.id} was not READY within ${timeoutMs} ms (${this.state})`));
        }, timeoutMs);
      }
    });
  }

  _readyFailure() {
    if (this._failure) return this._failure;
    if (this.state === CLOSED) return new HarkError(this.closeReason || "CLOSED", this.closeDetail || "session closed");
    return null;
  }

  /** Start listening (speech events and audio for the backend). With `waitForReady`, Hark waits
   * for READY instead of answering 409. */
  async startListening({ waitForReady = false } = {}) {
    await this._postListening({ listening: true, wait_for_ready: waitForReady });
  }

  async stopListening() {
    await this._postListening({ listening: false });
  }

  async _postListening(body) {
    const response = await request(
      `${this.url}/listening`,
      { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
      this._token,
    );
    if (!response.ok) throw await refusal(response);
  }

  /** Plays the agent's voice (a WHEP player on this session) into `audioElement` (a new <audio>
   * when none is given). Resolves with the player once Hark answered. */
  async play({ audioElement = null } = {}) {
    const element = audioElement || new Audio();
    element.autoplay = true;
    const pc = new RTCPeerConnection({ iceServers: this._iceServers || [] });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      element.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    const endpoint = this.url.replace(/\/whip\/([^/]+)$/, "/whep/$1");
    try {
      const { url } = await negotiate(pc, endpoint, {
        token: this._token,
        linkServers: !this._iceServers,
        redirectOrigins: this._redirectOrigins,
      });
      const player = new HarkPlayer(this, url, pc, element);
      this._players.add(player);
      return player;
    } catch (error) {
      pc.close();
      throw error;
    }
  }

  /** DELETEs the players and the session; resolves once the session is CLOSED. */
  async hangUp() {
    if (this.state === CLOSED) return;
    await Promise.all([...this._players].map((player) => player.stop()));
    try {
      const response = await request(this.url, { method: "DELETE" }, this._token);
      if (!response.ok && response.status !== 404) throw await refusal(response);
    } finally {
      await this._closedWithin(HANG_UP_WAIT_MS);
      if (this.state !== CLOSED) this._close("CLIENT_DELETE", "hung up (the event stream did not confirm)");
    }
  }

  _closedWithin(ms) {
    if (this.state === CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (this.state !== CLOSED) return;
        this.removeEventListener("state", done);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.removeEventListener("state", done);
        resolve();
      }, ms);
      this.addEventListener("state", done);
    });
  }

  _deleteOnPageHide() {
    for (const player of this._players) request(player.url, { method: "DELETE" }, this._token, true).catch(() => {});
    request(this.url, { method: "DELETE" }, this._token, true).catch(() => {});
  }

  _ownStream(stream, owned) {
    this.stream = stream;
    this._ownsStream = owned;
  }

  // The event stream: SSE over fetch (so the token travels in Authorization, never in a URL),
  // resumed with Last-Event-ID after every cut, with backoff and jitter between attempts, until
  // nothing was heard from Hark for connectionLostAfterMs.

  async _follow() {
    let attempt = 0;
    while (!this._abort.signal.aborted) {
      let delivered = false;
      let retryAfter = null;
      const connection = new AbortController();
      const stop = () => connection.abort();
      this._abort.signal.addEventListener("abort", stop);
      try {
        const response = await this._openStream(connection.signal);
        if (response.status === 404 || response.status === 410) {
          const text = (await response.text()).trim();
          this._close(this.closeReason || "CLOSE_REASON_UNSPECIFIED", text, new HarkError(response.status, text));
          return;
        }
        if (response.status >= 400 && response.status < 500 && ![408, 429].includes(response.status)) {
          this._fail(await refusal(response));
          return;
        }
        if (!response.ok) {
          retryAfter = response.headers.get("Retry-After");
          await response.body?.cancel();
        } else {
          delivered = await this._read(response, connection);
        }
      } catch {
        if (this._abort.signal.aborted) return;
      } finally {
        this._abort.signal.removeEventListener("abort", stop);
      }
      if (this.state === CLOSED) return;
      if (Date.now() - this._lastContact >= this._connectionLostAfterMs) {
        this._loseConnection();
        return;
      }
      attempt = delivered ? 0 : attempt + 1;
      await this._sleep(retryAfterDelay(retryAfter, { minMs: backoffDelay(attempt) }));
    }
  }

  _loseConnection() {
    const seconds = Math.round(this._connectionLostAfterMs / 1000);
    const detail = `the event stream could not reach Hark for ${seconds} s`;
    request(this.url, { method: "DELETE" }, this._token).catch(() => {}); // if only events were cut
    this._close(CONNECTION_LOST, detail, new HarkError(CONNECTION_LOST, detail));
  }

  _openStream(signal) {
    const headers = { Accept: "text/event-stream" };
    if (this._tracker.lastRevision !== null) headers["Last-Event-ID"] = String(this._tracker.lastRevision);
    return request(`${this.url}/events`, { headers, signal }, this._token);
  }

  /** Reads one connection to its end; true when it delivered anything new. */
  async _read(response, connection) {
    const parser = new SseParser();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let delivered = false;
    let idle = null;
    try {
      for (;;) {
        clearTimeout(idle);
        idle = setTimeout(() => connection.abort(), STREAM_IDLE_MS);
        const { value, done } = await reader.read();
        if (done) return delivered;
        this._lastContact = Date.now();
        for (const message of parser.feed(decoder.decode(value, { stream: true }))) {
          const verdict = this._tracker.accept(JSON.parse(message.data));
          if (verdict === "gap") return delivered; // reconnect from the last revision
          if (verdict === "deliver") {
            delivered = true;
            this._apply(JSON.parse(message.data));
          }
          if (this.state === CLOSED) return delivered;
        }
      }
    } finally {
      clearTimeout(idle);
      reader.cancel().catch(() => {});
    }
  }

  _sleep(ms) {
    const signal = this._abort.signal;
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      signal.addEventListener("abort", wake, { once: true });
    });
  }

  _apply(event) {
    this.revision = Number(event.revision || 0);
    this._emit("event", event);
    const kind = payloadOf(event);
    if (kind === "snapshot") {
      const session = event.snapshot.session;
      this._setListening(Boolean(session.listening), event);
      if (session.state === CLOSED) this._close(session.closeReason, session.closeDetail || "", null, event);
      else this._setState(session.state, event);
    } else if (kind === "stateChanged") {
      const change = event.stateChanged;
      if (change.state === CLOSED) this._close(change.closeReason, change.closeDetail || "", null, event);
      else this._setState(change.state, event);
    } else if (kind === "listeningChanged") {
      this._setListening(Boolean(event.listeningChanged.listening), event);
    } else if (kind === "speechStarted") {
      this._emit("speechstart", event);
    } else if (kind === "speechEnded") {
      this._emit("speechend", event);
    } else if (kind === "playbackStarted") {
      this._emit("playbackstart", event);
    } else if (kind === "playbackFinished" || kind === "playbackInterrupted") {
      this._emit("playbackend", event);
    }
  }

  _setState(state, event) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", event);
  }

  _setListening(listening, event) {
    if (listening === this.listening) return;
    this.listening = listening;
    this._emit("listening", event);
  }

  _fail(error) {
    this._failure = error;
    this._abort.abort();
    this._emit("error", error);
    this._emit("state", null); // wakes ready() waiters with the failure
  }

  _close(reason, detail, failure = null, event = null) {
    if (this.state === CLOSED) return;
    this.closeReason = reason || "CLOSE_REASON_UNSPECIFIED";
    this.closeDetail = detail || "";
    if (failure) this._failure = failure;
    this._abort.abort();
    globalThis.removeEventListener?.("pagehide", this._onPageHide);
    for (const player of this._players) player._release();
    this._players.clear();
    this.peerConnection.close();
    if (this._ownsStream) for (const track of this.stream.getTracks()) track.stop();
    this.listening = false;
    this.state = CLOSED;
    this._emit("state", event);
  }

  _emit(type, detail) {
    this.dispatchEvent(new DetailEvent(type, { detail }));
  }
}

/** A WHEP player of the agent's voice; `stop()` DELETEs it. */
export class HarkPlayer {
  constructor(session, url, pc, audioElement) {
    this.session = session;
    this.url = url;
    this.peerConnection = pc;
    this.audioElement = audioElement;
  }

  async stop() {
    if (!this.session._players.delete(this)) return;
    // DELETE before closing: Hark then counts a DELETE, not a player that went away
    const response = await request(this.url, { method: "DELETE" }, this.session._token).catch(() => null);
    this._release();
    if (response && !response.ok && response.status !== 404) throw await refusal(response);
  }

  _release() {
    this.peerConnection.close();
    this.audioElement.srcObject = null;
  }
}
