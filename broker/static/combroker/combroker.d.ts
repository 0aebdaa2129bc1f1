// Type declarations for combroker.js (the combroker.v1 client: WebSocket, SSE as the fallback).

/** A room: 1 to 16 keys, each a string, number or boolean; "*" is the wildcard. */
export type Room = Record<string, string | number | boolean>;
export type RequestId = number | string;
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export declare const SUBPROTOCOL: "combroker.v1";

export declare const CLOSE_CODES: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ORIGIN_NOT_ALLOWED: 1008;
  MESSAGE_TOO_BIG: 1009;
  AUTH_UNAVAILABLE: 1011;
  REFUSED: 4003;
  SLOW: 4008;
  REPLACED: 4009;
  KICKED: 4010;
  RATE_LIMITED: 4029;
}>;

/** Close code -> error code ("kicked", "replaced", ...). */
export declare const CLOSE_REASONS: Readonly<Record<number, string>>;

/** Any class with the browser WebSocket's constructor and on* handlers (e.g. Node's `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketClass = new (url: string, protocols?: string | string[], options?: unknown)
  => WebSocketLike;

/** Any class with the browser EventSource's constructor, on* handlers and addEventListener. */
export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  onmessage: ((ev: { data: string; lastEventId: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(type: "close", fn: (ev: { data: string }) => void): void;
}
export type EventSourceClass = new (url: string, init?: { withCredentials?: boolean })
  => EventSourceLike;

/**
 * How the client reaches the broker (issue 15).
 *
 * - `"auto"` (the default): the WebSocket. When it fails to open (closes or errs before its open
 *   event, or does not open within `openTimeout`: a proxy that blocks WebSockets), the same
 *   attempt goes on at once over SSE (`GET /sse/`, EventSource). Once SSE got a welcome while
 *   the WebSocket never opened on this client, every reconnect stays on SSE (the path blocks
 *   WebSockets: trying again would cost each reconnect a failure first). A client whose
 *   WebSocket did open once tries it first again at each reconnect.
 * - `"websocket"`: never SSE. `"sse"`: only SSE.
 *
 * SSE only receives. `subscribe` and `unsubscribe` reopen the stream with the new list (one
 * reopen per microtask batch; the new stream opens with the last event id before the old one
 * closes, and a delivery read on both is handed on once); the subscribe promise settles with
 * the new stream's reply, the unsubscribe once a stream without it is current. Every other
 * request (`send`, `publish`, `history`, `presence`, `presenceStats`, `admin`, `status`,
 * `confirm`, `ping`) rejects at once with code `"unsupported-transport"`, and a presence
 * subscription's snapshot likewise (an `error` event; its join/leave frames still come). No
 * keep-alive ping: the server's heart-beat comments keep the stream open. The stream's
 * `event: close` {code, reason} is a close with that code (4003, 4009, 4010 final, 4008
 * reconnects, ...). A stream refused with an HTTP error: the same URL is fetched once for the
 * status (403 and 400 final as a 4003 with the body's reason, but a 403 `duplicate-login`
 * and a 503 retried: the former may be this client's own previous stream, not gone yet).
 */
export type Transport = "websocket" | "sse";

export interface ClientOptions {
  /** Sent as ?token=...; the broker forwards it to the auth API as `Authorization: Token <t>`. */
  token?: string | (() => string | Promise<string>);
  /**
   * A connection ticket (`?ticket=`, minted by the backend: `{% combroker_ticket %}`). A ticket
   * opens one connection only, so pass a function that fetches a fresh one: it is called at
   * every connect (and every SSE reopen).
   */
  ticket?: string | (() => string | Promise<string>);
  /** Extra query parameters for the WebSocket URL. */
  params?: Record<string, string | number | boolean>;
  /** Re-open after a drop (default true). Never after 1008, 4003, 4009 or 4010. */
  reconnect?: boolean;
  /** First reconnect delay in ms before jitter (default 500). */
  minDelay?: number;
  /** Bound of every reconnect delay in ms (default 10000). */
  maxDelay?: number;
  /** Growth of the delay per failed attempt (default 2). */
  factor?: number;
  /** Each delay is drawn from [base * (1 - jitter), base] (default 0.5). */
  jitter?: number;
  /** Consecutive failed attempts before giving up with "reconnect-failed" (default Infinity). */
  maxAttempts?: number;
  /** Least delay after a 4029 (rate limited) close, ms (default 5000). */
  rateLimitedDelay?: number;
  /** Keep-alive ping period in ms; 0 disables (default 20000). */
  pingInterval?: number;
  /** A ping unanswered this long drops and re-opens the connection (default 10000). */
  pingTimeout?: number;
  /** Time for the socket to open and the welcome to arrive, ms (default 15000). */
  openTimeout?: number;
  /** A request unanswered this long rejects with code "timeout"; 0: never (default 15000). */
  requestTimeout?: number;
  /** The WebSocket class; default globalThis.WebSocket. In Node 20: `import WS from "ws"`. */
  WebSocket?: WebSocketClass;
  /** Third constructor argument for the WebSocket class (Node's ws: {headers}, ...). */
  wsOptions?: unknown;
  /**
   * Page reloads: where the resume token and its expiry are kept across page loads, under a key
   * of the broker URL (`resumeStorageKey`). Default: sessionStorage where it works (per tab);
   * null: not kept. A Storage that throws is treated as none.
   */
  resumeStorage?: ResumeStorage | null;
  /**
   * Ms a subscription the welcome says the broker holds (a resume's `subscriptions`,
   * `persistent`) waits for the page to subscribe to its room again; then it is unsubscribed
   * (a persistent one only forgotten here) and an "unclaimed" event says so (default 10000).
   */
  adoptTimeout?: number;
  /** Deliveries held for one such subscription until it is claimed; more: released (1000). */
  adoptMaxHeld?: number;
  /** "auto" (default), "websocket" or "sse": see {@link Transport}. */
  transport?: "auto" | Transport;
  /**
   * The event stream's URL (relative to the page); `token` and `params` are added. Default: the
   * WebSocket URL's host with http(s) and path `/sse/`, its query kept ("ws://h/ws/?token=t" ->
   * "http://h/sse/?token=t").
   */
  sseUrl?: string;
  /** The EventSource class; default globalThis.EventSource. */
  EventSource?: EventSourceClass;
  /**
   * EventSource's withCredentials (send the cookie to another origin). Default: true, unless
   * a `token` or `ticket` is in the stream's URL (then that is the credential).
   */
  withCredentials?: boolean;
  /** Used once to read why a stream was refused (its HTTP status); default globalThis.fetch. */
  fetch?: (url: string, init?: Record<string, unknown>) => Promise<{ status: number; json(): Promise<unknown> }>;
}

/** What the resume token is kept in (the Web Storage API's part it uses). */
export interface ResumeStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** A subscription the broker holds that the welcome names (resumed, or persistent). */
export interface HeldSubscription {
  requestId: RequestId;
  /** The room as the client named it. */
  room: Room;
  /** Asked with presence: true. */
  presence?: boolean;
  /** History rooms: the room's offset when the missed triggers were read, and whether all were. */
  offset?: number;
  recovered?: boolean;
  /** A persistent one not restored (its error code): the broker does not hold it. */
  refused?: string;
}

type OptionalOptions = "token" | "ticket" | "params" | "WebSocket" | "wsOptions" | "resumeStorage" | "sseUrl"
  | "EventSource" | "withCredentials" | "fetch";
export declare const DEFAULTS: Readonly<Required<Omit<ClientOptions, OptionalOptions>>
  & Pick<ClientOptions, OptionalOptions>>;

export interface WelcomeFrame {
  type: "welcome";
  is_authorized: true;
  is_authenticated: true;
  allowed_rooms: Room[];
  connection_id: string;
  login_id: string | null;
  profile: "agent" | "super_agent" | "service" | "admin";
  destination: string | null;
  resume_token: string | null;
  /** With a resume token: the seconds its state is kept after this connection closes. */
  resume_ttl?: number;
  /** Present when a resume token was presented: whether it was honoured. */
  resumed?: boolean;
  /** When resumed: the restored subscriptions (their room; history rooms: offset, recovered). */
  subscriptions?: HeldSubscription[];
  /** The login's persistent subscriptions restored at this open (and refused ones). */
  persistent?: HeldSubscription[];
  [key: string]: unknown;
}

export interface DeliveryFrame<T = Json> {
  type: "publish";
  requestId: RequestId;
  data: T;
  /** The trigger room that matched, keys sorted. */
  room: Room;
  /** The trigger's id. */
  id: string;
  /** A recorded trigger (history room): its offset in `room`'s history. */
  offset?: number;
}

export interface DirectMessage<T = Json> {
  type: "message";
  from: string | null;
  to: string;
  data: T;
  id: string;
  /** An acknowledged message: call `confirm(id)` once it is processed. */
  ack?: true;
}

export interface ConfirmedEvent { type: "confirmed"; id: string; to: string | null; }

export interface HistoryFrame<T = Json> {
  type: "history";
  requestId?: RequestId;
  room: Room;
  /** The room's last offset (0: nothing recorded). */
  offset: number;
  /** With `since`: every offset after it is still there. */
  recovered?: boolean;
  messages: Array<{ offset: number; id: string; data: T }>;
}

/** A member of a room's presence: a login (with its realm for static-key logins). */
export interface PresenceMember {
  login: string;
  profile: "agent" | "super_agent" | "service" | "admin";
  /** Only for static-key logins: "static". */
  realm?: string;
}

/** A member with its connections holding a subscription to the room. */
export interface PresenceCount extends PresenceMember {
  /** From the last snapshot; 1 for a member that joined since (a join is its first). */
  connections: number;
}

/** A join (the member's first connection in the room) or a leave (its last one gone). */
export interface PresenceEvent {
  type: "join" | "leave";
  requestId: RequestId;
  room: Room;
  member: PresenceMember;
}

export interface PresenceReply {
  type: "presence";
  requestId: RequestId;
  room: Room;
  /** Sorted; anonymous connections are not members. */
  members: PresenceCount[];
  /** Connections without a login. */
  anonymous: number;
}

export interface PresenceStatsReply {
  type: "presence_stats";
  requestId: RequestId;
  room: Room;
  /** Members (logins), anonymous connections not counted. */
  members: number;
  /** Every connection, anonymous ones included. */
  connections: number;
}

export interface SubscribeOptions {
  /** Be told who holds a subscription to the room (`presence-not-enabled` where it is off). */
  presence?: boolean;
  /** A join frame, applied to `sub.members` (this client's own join included). */
  onJoin?: (member: PresenceMember, frame: PresenceEvent) => void;
  /** A leave frame, applied to `sub.members`. */
  onLeave?: (member: PresenceMember, frame: PresenceEvent) => void;
  /** A snapshot (after every subscribe, re-subscribe and resume) replaced `sub.members`. */
  onPresence?: (members: PresenceCount[], reply: PresenceReply) => void;
  /**
   * Only the triggers whose tags it matches (docs/protocol.md "Event filters"), e.g.
   * `{and: [{eq: ["status", "paid"]}, {gt: ["amount", 100]}]}`.
   */
  filter?: Json;
  /** Kept by the broker for the login: its later connections get it back (the welcome). */
  persistent?: boolean;
}

export interface SuccessReply {
  code: "success";
  requestId: RequestId;
  /** The message or trigger id (send, publish). */
  id?: string;
  [key: string]: unknown;
}

export interface AdminConnection {
  id: string;
  login_id: string | null;
  profile: string;
  transport: string;
  remote_addr: string | null;
  connected_at: string;
  subscriptions: number;
  /** api or static */
  realm?: string;
}

export interface AdminStats {
  connections: number;
  rooms: number;
  triggers_per_s: number;
  deliveries_per_s: number;
  drops_per_s: number;
  triggers: number;
  deliveries: number;
  drops: number;
}

export interface AdminReply extends SuccessReply {
  type: "admin";
  action: string;
  connections?: AdminConnection[];
  stats?: AdminStats;
  processes?: Array<Record<string, unknown>>;
  kicked?: string[];
  /** action "presence": the room asked about and its members. */
  room?: Room;
  members?: PresenceCount[];
}

export interface StatusReply {
  type: "status";
  open_connections: number;
  num_rooms: number;
  online_since: string;
  requestId: RequestId;
}

/** A rejected request or a failed connection. */
export declare class CombrokerError extends Error {
  constructor(code: string, message?: string, extra?: Record<string, unknown>);
  /**
   * The contract's error code ("room-not-found", "destination-not-found", ...), a close reason
   * ("kicked", "replaced", "refused", "auth-unavailable", ...), or a client-side code:
   * "timeout", "disconnected" (the connection dropped before the reply), "closed", "not-open",
   * "reconnect-failed", "unsupported-transport" (a request SSE cannot carry: {@link Transport}).
   */
  code: string;
  detail?: string;
  /** The error frame, for request errors. */
  frame?: Record<string, unknown>;
  /** The request frame that failed. */
  request?: Record<string, unknown>;
  /** The WebSocket close code, for connection errors. */
  closeCode?: number;
  reason?: string;
  /** For a subscription the broker refused on restore after a reconnect. */
  subscription?: Subscription;
  /** "sse", for "unsupported-transport". */
  transport?: Transport;
}

export declare class Subscription<T = Json> {
  readonly client: CombrokerClient;
  /**
   * The requestId: the same on every connection (restored after reconnects); unique across page
   * loads. An adopted subscription keeps the id the broker gave it back under.
   */
  readonly id: RequestId;
  /** One the broker gave back (a reload's resume, a persistent one) and this page adopted. */
  readonly adopted: boolean;
  readonly room: Room;
  onData: (data: T, frame: DeliveryFrame<T>) => void;
  /** The broker holds it on the current connection. */
  active: boolean;
  /** Unsubscribed, or refused by the broker. */
  closed: boolean;
  deliveries: number;
  /** History rooms: the last offset received, sent as `since` when subscribing again. */
  offset: number | null;
  /** Asked with `presence: true`. */
  readonly presence: boolean;
  /** The event filter it was made with (null: none). */
  readonly filter: Json | null;
  /** Asked with `persistent: true`. */
  readonly persistent: boolean;
  onJoin?: SubscribeOptions["onJoin"];
  onLeave?: SubscribeOptions["onLeave"];
  onPresence?: SubscribeOptions["onPresence"];
  /** Presence: the room's members by memberKey(). */
  members: Map<string, PresenceCount>;
  /** Presence: anonymous connections in the last snapshot. */
  anonymous: number;
  /** Resolves with this subscription once the broker accepted it; rejects with its error. */
  readonly ready: Promise<Subscription<T>>;
  /** Stop receiving; resolves once the broker confirmed (at once when disconnected). */
  unsubscribe(): Promise<void>;
}

export interface OpenEvent { welcome: WelcomeFrame; reconnected: boolean; }
export interface CloseEvent { code: number; reason: string; wasOpen: boolean; willReconnect: boolean; }
export interface ReconnectingEvent { attempt: number; delay: number; code: number; reason: string; }
export interface TransportEvent {
  transport: Transport;
  previous: Transport | null;
  /**
   * "default" (the WebSocket), "option" (`transport` forces it), "websocket-failed" (it did
   * not open: SSE at once), "sse-worked" (SSE worked where the WebSocket never did),
   * "no-websocket" (no WebSocket class).
   */
  reason: "default" | "option" | "websocket-failed" | "sse-worked" | "no-websocket";
}
export interface ReconnectEvent {
  welcome: WelcomeFrame;
  /** Failed attempts before this one succeeded. */
  attempts: number;
  /** Successful re-opens so far. */
  reconnects: number;
  restored: Subscription[];
  failed: Array<{ ok: false; sub: Subscription; error: CombrokerError }>;
}

export interface UnclaimedEvent {
  requestId: RequestId;
  room: Room;
  persistent: boolean;
  /** "timeout" (adoptTimeout), "overflow" (adoptMaxHeld), "not-resumed" (a reconnect lost it). */
  reason: "timeout" | "overflow" | "not-resumed";
  /** Deliveries held for it and dropped. */
  dropped: number;
}

export interface ClientEvents {
  /** A welcome arrived (first connection or a reconnect). */
  open: OpenEvent;
  /** The connection closed; `willReconnect` tells whether another attempt follows. */
  close: CloseEvent;
  /** A socket error, a refused subscription restore, an error frame without requestId. */
  error: Error;
  /** A direct message to this client. */
  message: DirectMessage;
  /** Every recipient connection confirmed an acknowledged message this client sent. */
  confirmed: ConfirmedEvent;
  /** After a reconnect, once subscriptions were restored. */
  reconnect: ReconnectEvent;
  /** A reconnect attempt is scheduled. */
  reconnecting: ReconnectingEvent;
  /** Every delivery frame (also handed to its subscription's onData). */
  publish: DeliveryFrame;
  /** Every join frame (also applied to its subscription). */
  join: PresenceEvent;
  /** Every leave frame (also applied to its subscription). */
  leave: PresenceEvent;
  /**
   * Every inbound frame, parsed. Over SSE a delivery read on two streams is one frame, and the
   * welcome of a reopened stream updates `welcome` with no `open` event.
   */
  frame: Record<string, unknown>;
  /** A subscription the broker held was adopted by a subscribe to its room. */
  adopted: { subscription: Subscription; persistent: boolean };
  /** A subscription the broker held was not claimed by the page (see adoptTimeout). */
  unclaimed: UnclaimedEvent;
  /** The transport of the next attempt changed (first: "websocket" or "sse"). */
  transport: TransportEvent;
}

export declare class CombrokerClient {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly options: ClientOptions;
  state: "idle" | "connecting" | "open" | "reconnecting" | "closed";
  welcome: WelcomeFrame | null;
  resumeToken: string | null;
  /** Seconds the broker keeps a closed connection's state (the welcome's resume_ttl). */
  resumeTtl: number | null;
  /**
   * Ms since the epoch when the state of the last close (or page hide) expires: the resume
   * token is worth presenting until then. null while connected (the state is kept from the
   * close) or unknown. On a new page load, the kept token's, until the welcome.
   */
  resumeExpiresAt: number | null;
  /** The key the resume token is kept under in `resumeStorage` (null: none). */
  readonly resumeStorageKey: string | null;
  /** Subscriptions the broker holds that no subscribe has claimed yet, by JSON request id. */
  readonly unclaimed: Map<string, HeldSubscription & { persistent: boolean }>;
  attempt: number;
  reconnects: number;
  lastClose: { code: number; reason: string } | null;
  /** The current connection's transport, or the attempt's; null before the first. */
  transport: Transport | null;
  /** Resolves with the client at the first welcome; rejects on a final failure. */
  readonly ready: Promise<CombrokerClient>;
  readonly connectionId: string | null;
  readonly loginId: string | null;
  readonly profile: string | null;
  readonly destination: string | null;
  readonly allowedRooms: Room[];
  readonly subscriptions: Subscription[];
  readonly isOpen: boolean;

  on<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): void;

  open(): Promise<CombrokerClient>;
  /** Close for good (no reconnect); pending requests reject with code "closed". */
  close(code?: number, reason?: string): void;

  subscribe<T = Json>(room: Room, onData?: (data: T, frame: DeliveryFrame<T>) => void,
    options?: SubscribeOptions): Subscription<T>;
  /** A room's members (`room-not-found` unless one may subscribe to it). */
  presence(room: Room): Promise<PresenceReply>;
  /** A room's member and connection counts. */
  presenceStats(room: Room): Promise<PresenceStatsReply>;
  send(destination: string, data: Json, options?: { ack?: boolean }): Promise<SuccessReply>;
  /** Confirm an acknowledged message by its id. */
  confirm(id: string): Promise<SuccessReply>;
  publish(rooms: Room | Room[], data: Json, options?: { history?: boolean; tags?: Record<string, Json> }): Promise<SuccessReply>;
  history<T = Json>(room: Room, options?: { limit?: number; since?: number }): Promise<HistoryFrame<T>>;
  admin(action: "connections" | "stats" | "kick" | "presence" | string, args?: Record<string, Json>): Promise<AdminReply>;
  status(): Promise<StatusReply>;
  /** Resolves with the round trip in ms. */
  ping(timeout?: number): Promise<number>;
}

export declare function backoffDelay(attempt: number, options?: ClientOptions,
  random?: () => number): number;
/** A member's key in `Subscription.members`: its realm, profile and login. */
export declare function memberKey(member: PresenceMember): string;
export declare function websocketUrl(url: string, query?: Record<string, unknown>): string;
/** `option` if it is a working Storage (null: none), else sessionStorage if it works here. */
export declare function resumeStorageOf(option?: ResumeStorage | null): ResumeStorage | null;
/** The key the resume token of the broker at `url` is kept under. */
export declare function resumeStorageKey(url: string): string | null;
/** The event stream's URL: `explicit`, or the WebSocket URL's host with path /sse/; `query` added. */
export declare function sseUrl(url: string, query?: Record<string, unknown>, explicit?: string): string;
export declare function createClient(url: string, options?: ClientOptions): CombrokerClient;
/** Connect; resolves at the first welcome. Transient failures are retried with backoff. */
export declare function connect(url: string, options?: ClientOptions): Promise<CombrokerClient>;

declare const _default: {
  connect: typeof connect;
  createClient: typeof createClient;
  CombrokerClient: typeof CombrokerClient;
  CombrokerError: typeof CombrokerError;
  Subscription: typeof Subscription;
  backoffDelay: typeof backoffDelay;
  memberKey: typeof memberKey;
  websocketUrl: typeof websocketUrl;
  resumeStorageOf: typeof resumeStorageOf;
  resumeStorageKey: typeof resumeStorageKey;
  sseUrl: typeof sseUrl;
  SUBPROTOCOL: typeof SUBPROTOCOL;
  CLOSE_CODES: typeof CLOSE_CODES;
  CLOSE_REASONS: typeof CLOSE_REASONS;
  DEFAULTS: typeof DEFAULTS;
};
export default _default;
