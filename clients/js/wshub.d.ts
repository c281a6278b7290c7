// Type definitions for wshub.js, the client of the wshub.v1 protocol.

/** The library's version, sent as `version` in `connect` unless overridden. */
export declare const VERSION: string;
/** The WebSocket subprotocol: "wshub.v1". */
export declare const PROTOCOL: 'wshub.v1';

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A point in a channel's stream. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The reply to `publish`. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
  /** Appended to the hub's upstream stream for backends. */
  upstream?: true;
}

/** Who published (present when a client published and the namespace shows publishers). */
export interface PublisherInfo {
  client: string;
  user: string;
}

export interface Publication<T = any> {
  channel: string;
  offset: number;
  epoch: string;
  data: T;
  /** Absent for publications from the backend (HTTP API). */
  info?: PublisherInfo;
}

/** A connection subscribed to a channel (presence, join and leave). */
export interface Member {
  client: string;
  /** "" for anonymous connections. */
  user: string;
  /** The token's `info` claim, if any. */
  info?: Json;
}

export type ClientState = 'disconnected' | 'connecting' | 'connected' | 'closed';
export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed';

/**
 * Protocol error codes (docs/protocol.md): 100 internal, 101 unauthorized,
 * 102 unknown channel, 103 permission denied, 104 method not found,
 * 105 already subscribed, 106 limit exceeded, 107 bad request, 108 not available,
 * 109 token expired, 110 too many requests, 111 unrecoverable position,
 * 112 message too large.
 */
export type ProtocolErrorCode = number;

/**
 * Codes of failures the client detects itself:
 * - 'timeout': no reply within `timeout` ms (the command may or may not have been executed);
 * - 'connection_lost': the connection ended after the command was sent (it may or may not have been executed);
 * - 'closed': the client is closed (disconnect(), or it gave up); the command was never sent;
 * - 'get_token': the `getToken` callback threw or rejected (`cause` holds its error).
 */
export type ClientErrorCode = 'timeout' | 'connection_lost' | 'closed' | 'get_token';

export declare class WshubError extends Error {
  name: 'WshubError';
  /**
   * A protocol error code (number), a client-side code (string), or — when
   * `connect()` rejects because the server closed the connection for good — the
   * WebSocket close code (4500–4999).
   */
  code: ProtocolErrorCode | ClientErrorCode;
  /** Set on errors of refused subscriptions. */
  channel?: string;
  cause?: unknown;
  constructor(code: ProtocolErrorCode | ClientErrorCode, message: string, extra?: object);
}

export interface ClientOptions {
  /** The initial token (a JWT). null or absent: connect anonymously, unless `getToken` is given. */
  token?: string | null;
  /**
   * Returns a fresh token. Called to refresh the connection's token before it
   * expires (at ~85% of `ttl`; returning null skips that refresh), and before a
   * (re)connect when the client has no token, the token expired or expires within
   * 10 s, or the server refused it as expired (109 / close 4003). Returning null at
   * connect time connects anonymously.
   */
  getToken?: () => Promise<string | null> | string | null;
  /** Sent in `connect` (at most 64 bytes). Default "wshub-js". */
  name?: string;
  /** Sent in `connect` (at most 64 bytes). Default: the library's VERSION. */
  version?: string;
  /** Backoff base in ms. Default 500. */
  minReconnectDelay?: number;
  /** Backoff cap in ms. Default 20000. */
  maxReconnectDelay?: number;
  /**
   * Timeout in ms of every command (from the call, waiting for a connection
   * included) and of each connection attempt (WebSocket open + `connect` reply).
   * Default 10000.
   */
  timeout?: number;
  /** A WHATWG-compatible WebSocket constructor. Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructorLike;
}

/** What the client uses of a WebSocket (the browser's, Node's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // assigned by the client: onopen(), onmessage({data}), onclose({code, reason}), onerror()
  onopen: any;
  onmessage: any;
  onclose: any;
  onerror: any;
}

export type WebSocketConstructorLike = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectedContext {
  client: string;
  user: string;
  /** Seconds until the token expires; absent for tokens without `exp`. */
  ttl?: number;
}

export interface DisconnectedContext {
  /** The WebSocket close code (or the `disconnect` push's); 1006 for a lost connection, a failed attempt, a connect timeout or a heartbeat timeout; 1000 after disconnect(). */
  code: number;
  reason: string;
  /** false: the client is closed and will not reconnect. */
  reconnect: boolean;
}

export interface ClientEvents {
  state: (state: ClientState) => void;
  connected: (ctx: ConnectedContext) => void;
  disconnected: (ctx: DisconnectedContext) => void;
  /** Refused subscriptions, refused connects and refreshes, getToken failures, exceptions thrown by your callbacks. */
  error: (err: Error) => void;
}

export interface SubscribedContext {
  /** The channel's current position. */
  position: Position;
  /** The channel keeps history (recovery can work). */
  recoverable: boolean;
  /** With a `since`: the missed publications were recovered (they follow through onPublication). */
  recovered: boolean;
  /** false for the first successful subscribe of this Subscription, true after a reconnect or a server-requested resubscribe. */
  resubscribed: boolean;
}

export interface UnrecoverableContext {
  /** The channel's current position; the subscription continues from here. */
  position: Position;
}

export interface UnsubscribedContext {
  /** The protocol error code (e.g. 103 permission revoked, 102 unknown channel). */
  code: number | string;
  reason: string;
}

export interface SubscribeOptions<T = any> {
  onPublication?: (pub: Publication<T>, sub: Subscription<T>) => void;
  onJoin?: (member: Member, sub: Subscription<T>) => void;
  onLeave?: (member: Member, sub: Subscription<T>) => void;
  onSubscribed?: (ctx: SubscribedContext, sub: Subscription<T>) => void;
  /** A gap could not be filled from history: reload the state elsewhere, then continue from ctx.position. */
  onUnrecoverable?: (ctx: UnrecoverableContext, sub: Subscription<T>) => void;
  /** The server ended the subscription, or refused it. No more callbacks follow. */
  onUnsubscribed?: (ctx: UnsubscribedContext, sub: Subscription<T>) => void;
  /** Start from this position: the first subscribe recovers what came after it. */
  since?: Position;
}

export declare class Subscription<T = any> {
  readonly channel: string;
  readonly state: SubscriptionState;
  /** The last handled position (a copy), or null before the first subscribe reply when no `since` was given. */
  readonly position: Position | null;
  /** Leaves the channel; no callbacks are called afterwards. */
  unsubscribe(): void;
}

export interface HistoryOptions {
  /** At most this many publications (capped by the namespace's history size, its default). */
  limit?: number;
  /** Only publications after this position. Rejects with code 111 if it cannot be continued. */
  since?: Position;
}

export interface HistoryResult<T = any> {
  position: Position;
  /** Oldest first. */
  publications: Publication<T>[];
}

export declare class Client {
  /** `url` is the hub's WebSocket endpoint (a string or a URL object), e.g. "ws://127.0.0.1:8080/ws". */
  constructor(url: string | { readonly href: string }, options?: ClientOptions);

  readonly state: ClientState;
  /** The connection's client id while connected, else null. */
  readonly clientId: string | null;
  /** The user id of the current or last connection ("" for anonymous), null before the first connect. */
  readonly user: string | null;
  /** The active subscriptions. */
  readonly subscriptions: Subscription[];

  on<E extends keyof ClientEvents>(event: E, handler: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, handler: ClientEvents[E]): this;

  /**
   * Starts connecting; reconnects automatically afterwards. Resolves at the
   * first successful connect; rejects with a WshubError if the client gives up
   * first (a refused token, a 4500–4999 close, disconnect()).
   */
  connect(): Promise<void>;
  /** Closes for good: state 'closed', no reconnect, queued commands reject with 'closed', no timers left. */
  disconnect(): void;

  /** Subscribes (now or once connected) and keeps the subscription across reconnects. Throws a WshubError (code 105) if the channel already has a subscription. */
  subscribe<T = any>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  /** The subscription to `channel`, or null. */
  getSubscription(channel: string): Subscription | null;

  /** Resolves with the publication's position; in an `upstream` namespace also `upstream: true`, and with `upstream = "only"` no position. */
  publish(channel: string, data: Json | unknown): Promise<PublishResult>;
  presence(channel: string): Promise<Member[]>;
  history<T = any>(channel: string, options?: HistoryOptions): Promise<HistoryResult<T>>;
  /** A round trip to the server. */
  ping(): Promise<{}>;
}
