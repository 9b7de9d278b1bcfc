// Types of hark.js (Hark's browser SDK). Events carry protobuf JSON (media.v1.SessionEvent).

export declare const VERSION: string;

export type SessionState =
  | "SESSION_STATE_UNSPECIFIED"
  | "NEW"
  | "CONNECTING"
  | "CONNECTED"
  | "READY"
  | "CLOSED";

export type CloseReason =
  | "CLOSE_REASON_UNSPECIFIED"
  | "CLIENT_DELETE"
  | "API_END"
  | "ICE_FAILED"
  | "READY_TIMEOUT"
  | "MEDIA_TIMEOUT"
  | "EXPIRED"
  | "SHUTDOWN"
  | "ERROR"
  | "NODE_LOST";

/** A media.v1.Session in protobuf JSON. */
export interface SessionJson {
  id: string;
  state: SessionState;
  listening?: boolean;
  revision?: string;
  createdTime?: string;
  readyTime?: string;
  closedTime?: string;
  closeReason?: CloseReason;
  closeDetail?: string;
  whipUrl?: string;
  metadata?: Record<string, string>;
  origin?: string;
  /** The id of the node that owns the session. */
  node?: string;
  /** The owner's gRPC address (HOST:PORT), for backends. */
  grpcAddress?: string;
}

/** A media.v1.SessionEvent in protobuf JSON: exactly one payload field is set. */
export interface HarkEvent {
  sessionId: string;
  /** uint64 as a decimal string; left out when 0. */
  revision?: string;
  time?: string;
  snapshot?: { session: SessionJson; resync?: boolean };
  stateChanged?: {
    state: SessionState;
    previous?: SessionState;
    closeReason?: CloseReason;
    closeDetail?: string;
  };
  listeningChanged?: { listening?: boolean };
  speechStarted?: { segmentId?: string; startMs?: string };
  speechEnded?: {
    segmentId?: string;
    startMs?: string;
    endMs?: string;
    durationMs?: string;
    reason?: "SILENCE" | "MAX_LENGTH" | "STOPPED" | "SESSION_CLOSED";
  };
  playbackStarted?: { playbackId?: string; players?: number };
  playbackFinished?: { playbackId?: string; playedMs?: string };
  playbackInterrupted?: { playbackId?: string; playedMs?: string; reason?: string };
}

export interface PublishOptions {
  /** Bearer token: the server's --token or the session's own from CreateSession. */
  token?: string | null;
  /** Publish this stream instead of asking for the microphone. */
  stream?: MediaStream | null;
  /** ICE servers to use; when left out, those Hark announces in `Link` headers. */
  iceServers?: RTCIceServer[] | null;
  /** Microphone constraints, over the defaults (echo cancellation, noise suppression and
   * auto gain on). */
  audio?: MediaTrackConstraints;
  /** Origins (e.g. "https://node2.hark.example") a redirect may lead to with the token, besides
   * the WHIP URL's own host; never over a downgrade from https to http. */
  redirectOrigins?: string[];
  /** How long the event stream may fail to reach Hark before the session is closed here with
   * "CONNECTION_LOST" (default 120000). */
  connectionLostAfterMs?: number;
}

/** `code`: the HTTP status of a refused request (0 when Hark could not be reached), the close
 * reason of a session that closed ("CONNECTION_LOST" when its event stream gave up), "TIMEOUT",
 * or "REDIRECT_REFUSED" (the token was not sent on to where a redirect led); `reason`: the text. */
export declare class HarkError extends Error {
  constructor(code: number | string, reason: string);
  readonly code:
    | number
    | CloseReason
    | "CONNECTION_LOST"
    | "TIMEOUT"
    | "NO_AUDIO"
    | "REDIRECT_REFUSED"
    | string;
  readonly reason: string;
}

export interface HarkSessionEventMap {
  /** `state` changed; detail: the event that changed it (null when the SDK closed it itself). */
  state: CustomEvent<HarkEvent | null>;
  listening: CustomEvent<HarkEvent>;
  speechstart: CustomEvent<HarkEvent>;
  speechend: CustomEvent<HarkEvent>;
  playbackstart: CustomEvent<HarkEvent>;
  /** A playback finished or was interrupted (see `playbackInterrupted.reason`). */
  playbackend: CustomEvent<HarkEvent>;
  /** Every raw event, each revision exactly once and in order. */
  event: CustomEvent<HarkEvent>;
  /** The event stream was refused for good (e.g. 401). */
  error: CustomEvent<HarkError>;
}

export declare class HarkSession extends EventTarget {
  /** The session id, as in every gRPC call and log line. */
  readonly id: string;
  /** The absolute URL of the session's WHIP resource. */
  readonly url: string;
  readonly state: SessionState;
  readonly listening: boolean;
  /** "CONNECTION_LOST": the SDK closed it after its event stream failed for connectionLostAfterMs. */
  readonly closeReason: CloseReason | "CONNECTION_LOST" | null;
  readonly closeDetail: string;
  /** The revision of the latest event applied. */
  readonly revision: number;
  readonly stream: MediaStream;
  readonly peerConnection: RTCPeerConnection;

  /** Resolves at READY (at once if already READY); rejects with a HarkError on CLOSED or after
   * `timeoutMs` (0: no timeout). */
  ready(options?: { timeoutMs?: number }): Promise<HarkSession>;
  startListening(options?: { waitForReady?: boolean }): Promise<void>;
  stopListening(): Promise<void>;
  /** A WHEP player of the agent's voice, into `audioElement` (a new one when left out). */
  play(options?: { audioElement?: HTMLAudioElement | null }): Promise<HarkPlayer>;
  /** DELETEs the players and the session; resolves once the session is CLOSED. */
  hangUp(): Promise<void>;

  addEventListener<K extends keyof HarkSessionEventMap>(
    type: K,
    listener: (this: HarkSession, ev: HarkSessionEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HarkSessionEventMap>(
    type: K,
    listener: (this: HarkSession, ev: HarkSessionEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export declare class HarkPlayer {
  readonly session: HarkSession;
  /** The absolute URL of the WHEP player resource. */
  readonly url: string;
  readonly peerConnection: RTCPeerConnection;
  readonly audioElement: HTMLAudioElement;
  /** DELETEs the player and stops playing. */
  stop(): Promise<void>;
}

/** Publishes the microphone (or `options.stream`) over WHIP; resolves once Hark answered 201. */
export declare function publish(whipUrl: string, options?: PublishOptions): Promise<HarkSession>;
