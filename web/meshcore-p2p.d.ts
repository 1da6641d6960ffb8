/**
 * Meshcore browser client: joins a Meshcore node's mesh from a web page over WebRTC.
 * The wire contract is `web/PROTOCOL.md`.
 */

/** Options of {@link MeshcoreP2P}. */
export interface MeshcoreP2POptions {
  /** Base URL of the node's API, absolute or relative to the page. Default `'/v1'`. */
  apiUrl?: string;
  /** A data channel to a peer opened. */
  onPeerConnected?: (peerId: string) => void;
  /**
   * A peer sent application data: the parsed JSON, or the text itself when it is not JSON.
   * `peerId` is the sender's own id, also for a node or a browser elsewhere on the mesh
   * whose message the node carried.
   */
  onMessage?: (peerId: string, data: unknown) => void;
  /** An open data channel closed. */
  onPeerDisconnected?: (peerId: string) => void;
  /**
   * Something failed that no returned promise reports (a malformed message from a peer, a
   * dropped signaling socket, a refused offer). Default: `console.error`.
   */
  onError?: (error: Error) => void;
  /** The browsers registered on the node's signaling socket changed. */
  onAvailablePeersChanged?: (peerIds: string[]) => void;
  /** Which stored identity to use; distinct names give one origin several identities. Default `'default'`. */
  identityName?: string;
}

/** A message delivered and acknowledged. */
export interface DeliveryResult {
  /** Always true: failures reject instead. */
  delivered: true;
  /** 0 over a direct data channel, else every link the message crossed (data channels included). */
  hops: number;
  /** Round trip until the acknowledgement, in milliseconds. */
  rtt_ms: number;
}

/** The outcome of a broadcast for one peer; failures do not reject the broadcast. */
export type BroadcastResult =
  | ({ peerId: string } & DeliveryResult)
  | { peerId: string; delivered: false; error: string };

/** One of this client's peer connections. */
export interface PeerStats {
  /** The peer's id. */
  peerId: string;
  /** The API's node, or another browser. */
  type: 'node' | 'browser';
  /** The data channel's state. */
  state: 'connecting' | 'open' | 'closed';
  /** Data-channel bytes sent. */
  bytesSent: number;
  /** Data-channel bytes received. */
  bytesReceived: number;
  /** The ICE round trip in milliseconds, when measured. */
  rttMs: number | null;
}

/** What {@link MeshcoreP2P.getNetworkStats} returns. */
export interface NetworkStats {
  /** The node's `GET {apiUrl}/stats` answer. */
  node: Record<string, unknown>;
  /** This client's id. */
  peerId: string;
  /** The API node's id. */
  nodeId: string;
  /** Every peer connection, open or opening. */
  peers: PeerStats[];
  /** Browsers registered on the node's signaling socket. */
  availablePeers: string[];
}

/** What {@link MeshcoreDiagnostics.echoStream} returns. */
export interface EchoStreamResult {
  /** SHA-256 (hex) of all bytes sent. */
  sentSha256: string;
  /** SHA-256 (hex) of all bytes echoed back. */
  receivedSha256: string;
  /** Bytes sent (and received back). */
  bytes: number;
  /** Time from the first ECHO to the last ECHO_REPLY. */
  ms: number;
}

/** What {@link MeshcoreDiagnostics.upload} and {@link MeshcoreDiagnostics.download} return. */
export interface TransferResult {
  /** Bytes transferred. */
  bytes: number;
  /** Time from the first message to the node's report. */
  ms: number;
  /** SHA-256 (hex) of the bytes as this page has them. */
  sha256Local: string;
  /** SHA-256 (hex) the node reports for the same bytes. */
  sha256Node: string;
}

/**
 * Diagnostic exchanges with the API's node over its data channel (ECHO, SOURCE, SINK), to
 * measure latency and throughput and check integrity. Needs an open channel to the node;
 * not part of the specification's API. Obtained as {@link MeshcoreP2P.diagnostics}.
 */
export declare class MeshcoreDiagnostics {
  private constructor();
  /** Sends one ECHO (at most 64 KiB) and resolves with the node's ECHO_REPLY body. */
  echo(bytes: Uint8Array): Promise<Uint8Array>;
  /**
   * Echoes `totalBytes` of generated data through the node in ECHO messages of `chunk`
   * bytes (default 16384, at most 65536), at most 4 MiB in flight, and hashes what went out
   * and what came back.
   */
  echoStream(totalBytes: number, chunk?: number): Promise<EchoStreamResult>;
  /**
   * Sends `totalBytes` of generated data in SINK messages of `chunk` bytes (default 16384,
   * at most 65536), then SINK_END, and resolves with the node's SINK_REPORT beside the
   * local hash.
   */
  upload(totalBytes: number, chunk?: number): Promise<TransferResult>;
  /**
   * Asks the node for `totalBytes` (at most 1 GiB) with SOURCE, collects SOURCE_DATA until
   * SOURCE_END and resolves with the node's hash beside the hash of what arrived.
   */
  download(totalBytes: number): Promise<TransferResult>;
}

/**
 * The browser peer: its identity (Ed25519, kept in IndexedDB), its signaling socket, its
 * data channels to the node and to other browsers. The constructor starts initialisation;
 * every method waits for {@link MeshcoreP2P.ready}.
 */
export declare class MeshcoreP2P {
  constructor(options?: MeshcoreP2POptions);

  /**
   * Resolves when the identity is loaded (or created), the node's WebRTC settings are
   * fetched and the signaling socket is registered; rejects with the reason otherwise (the
   * error also goes to `onError`).
   */
  readonly ready: Promise<void>;

  /** Diagnostic exchanges with the node; not part of the specification's API. */
  readonly diagnostics: MeshcoreDiagnostics;

  /** This client's id (64 hex characters), once ready; else null. */
  get peerId(): string | null;

  /** The id of the node serving the API, once ready; else null. */
  get nodeId(): string | null;

  /** The other browsers registered on the node's signaling socket now. */
  get availablePeers(): string[];

  /**
   * Opens a data channel to the API's node (`peerId` its id, null or omitted) or to a
   * browser registered on its signaling socket or on another node's (signaling crosses the
   * mesh), and resolves when it is open. Rejects when the peer's binding signature does not
   * verify, when signaling fails (`unknown_peer`: no node hosts it), or when the channel
   * does not open within 20 s. Other nodes are reached with {@link sendToPeer} through the
   * mesh. `peerInfo` is accepted for the specification's signature and not needed.
   */
  connectToPeer(peerId?: string | null, peerInfo?: unknown): Promise<void>;

  /**
   * Sends `data` (anything `JSON.stringify` accepts, at most 64 KiB of JSON). Over an open
   * data channel it resolves on the peer's acknowledgement with `hops: 0`. To any other
   * peer — a node, or a browser on any node — it goes, signed by this client, through the
   * connected node across the mesh (the receiver sees this client's id as the sender) and
   * resolves once the peer has it, or rejects with the node's error text.
   */
  sendToPeer(peerId: string, data: unknown): Promise<DeliveryResult>;

  /** Sends `data` to every peer with an open data channel; one result per peer. */
  broadcastToPeers(data: unknown): Promise<BroadcastResult[]>;

  /** The node's statistics and this client's connections. */
  getNetworkStats(): Promise<NetworkStats>;

  /** Closes every peer connection and the signaling socket; the client cannot be reused. */
  close(): void;
}

export default MeshcoreP2P;
