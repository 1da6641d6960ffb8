/**
 * Meshcore browser client: joins a Meshcore node's mesh from a web page over WebRTC.
 *
 * One ES module with no dependencies and no build step. A page gets an Ed25519 identity
 * (kept in IndexedDB), registers on its node's signaling WebSocket, opens a WebRTC data
 * channel to the node (signaled over HTTP) and to other browsers on the same node
 * (signaled over the WebSocket), and sends messages directly over those channels or, through
 * the node, to any node of the mesh.
 *
 * The wire contract (HTTP and WebSocket signaling, the DTLS binding signatures, the
 * data-channel messages) is `web/PROTOCOL.md`; the names of the message tags below are its
 * names.
 *
 * @example
 * import { MeshcoreP2P } from '/meshcore-p2p.js';
 * const mesh = new MeshcoreP2P({
 *   apiUrl: '/v1',
 *   onMessage: (peerId, data) => console.log(peerId, data),
 * });
 * await mesh.ready;
 * await mesh.connectToPeer(mesh.nodeId);
 * await mesh.sendToPeer(mesh.nodeId, { type: 'chat', message: 'Hello!' });
 *
 * @module meshcore-p2p
 */

/** The label of the one data channel of every peer connection. */
const DATA_CHANNEL_LABEL = 'meshcore';

/** Largest body of an application or diagnostic message (64 KiB). */
const MAX_BODY_BYTES = 64 * 1024;

/** MESH_SEND's fixed fields: request, destination, message id, timestamp, signature. */
const MESH_SEND_FIXED_BYTES = 4 + 32 + 16 + 8 + 64;

/** MESH_MESSAGE's fixed fields: sequence, source, hops. */
const MESH_MESSAGE_FIXED_BYTES = 4 + 32 + 1;

/** Largest data-channel message: a body and its fixed fields. */
const MAX_MESSAGE_BYTES = MAX_BODY_BYTES + MESH_SEND_FIXED_BYTES + 1;

/** Most bytes one SOURCE request may ask the node for (1 GiB). */
const MAX_SOURCE_BYTES = 2 ** 30;

/** Sends wait while a channel has this much queued (Chromium fails sends at 16 MiB). */
const SEND_BUFFER_LIMIT_BYTES = 8 * 1024 * 1024;

/** A waiting send resumes when the queue has drained to this. */
const SEND_BUFFER_LOW_BYTES = 1024 * 1024;

/** Most ECHO bytes in flight at once during {@link MeshcoreDiagnostics#echoStream}. */
const ECHO_WINDOW_BYTES = 4 * 1024 * 1024;

/** Remote ICE candidates kept while the remote description is not set yet. */
const MAX_QUEUED_CANDIDATES = 64;

/** A peer connection whose data channel has not opened by then is closed. */
const OPEN_TIMEOUT_MS = 20_000;

/** Limit on each HTTP request to the node's API. */
const HTTP_TIMEOUT_MS = 20_000;

/** Limit on the signaling handshake (challenge, hello, welcome). */
const REGISTER_TIMEOUT_MS = 10_000;

/** Limit on the APP_ACK of an APP. */
const APP_ACK_TIMEOUT_MS = 30_000;

/** Limit on the MESH_RESULT of a MESH_SEND (the node's own delivery limit is shorter). */
const MESH_RESULT_TIMEOUT_MS = 60_000;

/** A diagnostic exchange fails when the node stays silent this long. */
const DIAGNOSTIC_IDLE_TIMEOUT_MS = 30_000;

/** First and longest wait before reopening a dropped signaling socket. */
const RECONNECT_MIN_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;

/** IndexedDB database and object store holding identities, keyed by identity name. */
const IDENTITY_DB_NAME = 'meshcore-p2p';
const IDENTITY_STORE = 'identity';

/** Data-channel message tags (PROTOCOL.md, "The data channel"). */
const Tag = Object.freeze({
  PING: 0x01,
  PONG: 0x02,
  ECHO: 0x03,
  ECHO_REPLY: 0x04,
  APP: 0x05,
  APP_ACK: 0x06,
  MESH_SEND: 0x07,
  MESH_RESULT: 0x08,
  SOURCE: 0x0a,
  SOURCE_DATA: 0x0b,
  SOURCE_END: 0x0c,
  SINK: 0x0d,
  SINK_END: 0x0e,
  SINK_REPORT: 0x0f,
  MESH_MESSAGE: 0x10,
});

/** The tags another browser may send; the rest come only from a node. */
/** @type {Set<number>} */
const BROWSER_TAGS = new Set([Tag.PING, Tag.PONG, Tag.APP, Tag.APP_ACK]);

const PEER_ID_PATTERN = /^[0-9a-f]{64}$/;
const SIGNATURE_PATTERN = /^[0-9a-f]{128}$/;

const utf8Encoder = new TextEncoder();
const strictUtf8Decoder = new TextDecoder('utf-8', { fatal: true });
const lenientUtf8Decoder = new TextDecoder('utf-8');

/**
 * @typedef {object} MeshcoreP2POptions
 * @property {string} [apiUrl='/v1'] Base URL of the node's API, absolute or relative to
 *   the page.
 * @property {(peerId: string) => void} [onPeerConnected] A data channel to a peer opened.
 * @property {(peerId: string, data: unknown) => void} [onMessage] A peer sent application
 *   data: the parsed JSON, or the text itself when it is not JSON.
 * @property {(peerId: string) => void} [onPeerDisconnected] An open data channel closed.
 * @property {(error: Error) => void} [onError] Something failed that no returned promise
 *   reports (a malformed message from a peer, a dropped signaling socket, a refused offer).
 *   Defaults to `console.error`.
 * @property {(peerIds: string[]) => void} [onAvailablePeersChanged] The browsers registered
 *   on the node's signaling socket changed.
 * @property {string} [identityName='default'] Which stored identity to use; distinct names
 *   give one origin several identities.
 */

/**
 * @typedef {object} DeliveryResult
 * @property {true} delivered Always true: failures reject instead.
 * @property {number} hops 0 over a direct data channel, else the mesh hops the node reports.
 * @property {number} rtt_ms Round trip until the acknowledgement, in milliseconds.
 */

/**
 * @typedef {{peerId: string, delivered: true, hops: number, rtt_ms: number}
 *   | {peerId: string, delivered: false, error: string}} BroadcastResult
 */

/**
 * @typedef {object} PeerStats
 * @property {string} peerId The peer's id.
 * @property {'node' | 'browser'} type The API's node, or another browser.
 * @property {'connecting' | 'open' | 'closed'} state The data channel's state.
 * @property {number} bytesSent Data-channel bytes sent.
 * @property {number} bytesReceived Data-channel bytes received.
 * @property {number | null} rttMs The ICE round trip, when measured.
 */

/**
 * @typedef {object} NetworkStats
 * @property {object} node The node's `GET {apiUrl}/stats` answer.
 * @property {string} peerId This client's id.
 * @property {string} nodeId The API node's id.
 * @property {PeerStats[]} peers Every peer connection, open or opening.
 * @property {string[]} availablePeers Browsers registered on the node's signaling socket.
 */

/**
 * @typedef {object} EchoStreamResult
 * @property {string} sentSha256 SHA-256 (hex) of all bytes sent.
 * @property {string} receivedSha256 SHA-256 (hex) of all bytes echoed back.
 * @property {number} bytes Bytes sent (and received back).
 * @property {number} ms Time from the first ECHO to the last ECHO_REPLY.
 */

/**
 * @typedef {object} TransferResult
 * @property {number} bytes Bytes transferred.
 * @property {number} ms Time from the first message to the node's report.
 * @property {string} sha256Local SHA-256 (hex) of the bytes as this page has them.
 * @property {string} sha256Node SHA-256 (hex) the node reports for the same bytes.
 */

/**
 * @typedef {object} Identity
 * @property {CryptoKey} privateKey Ed25519 signing key (not extractable).
 * @property {CryptoKey} publicKey Ed25519 public key.
 * @property {string} id Hex of the raw public key.
 */

/**
 * The browser peer: its identity, its signaling socket, its data channels to the node and
 * to other browsers.
 *
 * The constructor starts initialisation; {@link MeshcoreP2P#ready} settles when it is done.
 * Every method waits for it, so they may be called at once.
 */
export class MeshcoreP2P {
  /**
   * Resolves when the identity is loaded (or created), the node's WebRTC settings are
   * fetched and the signaling socket is registered; rejects with the reason otherwise
   * (the error also goes to `onError`).
   * @type {Promise<void>}
   */
  ready;

  /**
   * Diagnostic exchanges with the node (echo and throughput); not part of the
   * specification's API.
   * @type {MeshcoreDiagnostics}
   */
  diagnostics;

  /** @type {Required<Omit<MeshcoreP2POptions, 'apiUrl' | 'identityName'>>} */
  #callbacks;
  /** @type {string} */
  #apiBase;
  /** @type {string} */
  #identityName;
  /** @type {Identity | null} */
  #identity = null;
  /** @type {string | null} */
  #nodeId = null;
  /** @type {RTCIceServer[]} */
  #iceServers = [];
  /** @type {SignalingSocket | null} */
  #signaling = null;
  /** Signaling messages are handled one after another, in arrival order. */
  #signalTail = Promise.resolve();
  /** @type {Map<string, PeerLink>} One connection per peer, open or opening. */
  #links = new Map();
  /** @type {Map<string, Set<{resolve: () => void, reject: (error: Error) => void}>>} */
  #openWaiters = new Map();
  /** @type {Set<string>} */
  #availablePeers = new Set();
  /** Set once {@link MeshcoreP2P#ready} has resolved. */
  #started = false;
  #closed = false;

  /**
   * @param {MeshcoreP2POptions} [options]
   */
  constructor(options = {}) {
    const {
      apiUrl = '/v1',
      identityName = 'default',
      onPeerConnected = () => {},
      onMessage = () => {},
      onPeerDisconnected = () => {},
      onError = (error) => console.error('meshcore-p2p:', error),
      onAvailablePeersChanged = () => {},
    } = options;
    this.#callbacks = {
      onPeerConnected,
      onMessage,
      onPeerDisconnected,
      onError,
      onAvailablePeersChanged,
    };
    this.#apiBase = new URL(apiUrl, globalThis.location?.href).href.replace(/\/+$/, '');
    this.#identityName = identityName;
    this.diagnostics = new MeshcoreDiagnostics(() => this.#openNodeLink());
    this.ready = this.#start();
    this.ready.catch((error) => this.#report(error));
  }

  /**
   * This client's id (64 hex characters), once {@link MeshcoreP2P#ready}; else null.
   * @type {string | null}
   */
  get peerId() {
    return this.#identity?.id ?? null;
  }

  /**
   * The id of the node serving the API, once {@link MeshcoreP2P#ready}; else null.
   * @type {string | null}
   */
  get nodeId() {
    return this.#nodeId;
  }

  /**
   * The other browsers registered on the node's signaling socket now.
   * @type {string[]}
   */
  get availablePeers() {
    return [...this.#availablePeers];
  }

  /**
   * Opens a data channel to the API's node or to a browser — one registered on the node's
   * signaling socket, or on another node's (the node relays the signaling across the
   * mesh) — and resolves when it is open (at once if it already is). Rejects when the
   * peer's binding signature does not verify, when signaling fails (e.g. `unknown_peer`:
   * no node hosts that browser), or when the channel does not open within 20 s.
   *
   * Other nodes are not connected to: {@link MeshcoreP2P#sendToPeer} reaches them through
   * the mesh.
   *
   * @param {string | null} [peerId] The node's id (also when null or omitted) or a
   *   browser's id.
   * @param {unknown} [peerInfo] Accepted for the specification's signature; connection
   *   details come from signaling.
   * @returns {Promise<void>}
   */
  async connectToPeer(peerId, peerInfo) {
    await this.ready;
    this.#assertOpen();
    const target = peerId ?? this.#nodeId;
    if (target === this.peerId) {
      throw new Error('cannot connect to this client itself');
    }
    const existing = this.#links.get(target);
    if (existing?.state === 'open') {
      return;
    }
    const isNode = target === this.#nodeId;
    if (!isNode && !PEER_ID_PATTERN.test(target)) {
      throw new Error(`invalid peer id ${JSON.stringify(target)}: expected 64 lowercase hex`);
    }
    // A browser that is not on this node's signaling socket may be on another node's: the
    // node relays the offer across the mesh, or answers unknown_peer (which fails this).
    const opened = this.#awaitOpen(target);
    if (!existing) {
      if (isNode) {
        this.#startNodeConnection();
      } else {
        this.#startBrowserOffer(target);
      }
    }
    await opened;
  }

  /**
   * Sends `data` (anything `JSON.stringify` accepts) to a peer. Over an open data channel
   * (the node or a browser) it goes as one APP message and resolves on its APP_ACK with
   * `hops: 0`. To any other peer — a node, or a browser on any node — it goes, signed by
   * this client, through the connected node across the mesh; the receiver sees this
   * client's id as the sender. It resolves with the node's report once the peer has it
   * (`hops` counts every link, the data channels included), or rejects with the node's
   * error text.
   *
   * @param {string} peerId The destination's id.
   * @param {unknown} data The message.
   * @returns {Promise<DeliveryResult>}
   */
  async sendToPeer(peerId, data) {
    await this.ready;
    this.#assertOpen();
    const payload = encodeAppPayload(data);
    const direct = this.#links.get(peerId);
    if (direct?.state === 'open') {
      return direct.sendApp(payload);
    }
    if (typeof peerId !== 'string' || !PEER_ID_PATTERN.test(peerId)) {
      throw new Error(`invalid peer id ${JSON.stringify(peerId)}: expected 64 lowercase hex`);
    }
    if (peerId === this.peerId) {
      throw new Error('cannot send to this client itself');
    }
    const gateway = this.#links.get(this.#nodeId);
    if (gateway?.state !== 'open') {
      throw new Error(
        `not connected to the node, which carries messages to ${describePeer(peerId)} ` +
          'across the mesh: call connectToPeer(nodeId) first',
      );
    }
    const id = crypto.getRandomValues(new Uint8Array(16));
    const timestamp = Date.now();
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', payload));
    const text = [
      'meshcore-browser-message/1',
      this.peerId,
      peerId,
      bytesToHex(id),
      String(timestamp),
      bytesToHex(digest),
    ].join('\n');
    const signature = await signText(this.#identity.privateKey, 'browser-message', text);
    return gateway.meshSend(hexToBytes(peerId), payload, { id, timestamp, signature: hexToBytes(signature) });
  }

  /**
   * Sends `data` as an APP message to every peer with an open data channel.
   *
   * @param {unknown} data The message.
   * @returns {Promise<BroadcastResult[]>} One result per peer; failures do not reject.
   */
  async broadcastToPeers(data) {
    await this.ready;
    this.#assertOpen();
    const payload = encodeAppPayload(data);
    const open = [...this.#links.values()].filter((link) => link.state === 'open');
    return Promise.all(
      open.map(async (link) => {
        try {
          return { peerId: link.peerId, ...(await link.sendApp(payload)) };
        } catch (error) {
          return { peerId: link.peerId, delivered: false, error: errorMessage(error) };
        }
      }),
    );
  }

  /**
   * The node's statistics and this client's connections.
   * @returns {Promise<NetworkStats>}
   */
  async getNetworkStats() {
    await this.ready;
    this.#assertOpen();
    const [node, peers] = await Promise.all([
      this.#requestJson('GET', '/stats'),
      Promise.all([...this.#links.values()].map((link) => link.stats())),
    ]);
    return {
      node,
      peerId: this.peerId,
      nodeId: this.#nodeId,
      peers,
      availablePeers: this.availablePeers,
    };
  }

  /**
   * Closes every peer connection and the signaling socket. Pending sends reject; the
   * client cannot be used again.
   */
  close() {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    this.#signaling?.close();
    for (const link of [...this.#links.values()]) {
      link.close(null);
    }
    for (const peerId of [...this.#openWaiters.keys()]) {
      this.#settleOpenWaiters(peerId, new Error('the client was closed'));
    }
  }

  async #start() {
    const [identity, settings] = await Promise.all([
      loadIdentity(this.#identityName),
      this.#requestJson('GET', '/webrtc'),
    ]);
    if (!PEER_ID_PATTERN.test(settings?.node_id ?? '') || !Array.isArray(settings.ice_servers)) {
      throw new Error(`GET ${this.#apiBase}/webrtc: the answer has no node_id or ice_servers`);
    }
    this.#assertOpen();
    this.#identity = identity;
    this.#nodeId = settings.node_id;
    this.#iceServers = settings.ice_servers;
    const url = new URL(`${this.#apiBase}/signal`);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    this.#signaling = new SignalingSocket(url.href, identity, settings.node_id, {
      onWelcome: (welcome) => this.#onWelcome(welcome),
      onMessage: (message) => this.#queueSignal(message),
      onDisconnected: () => this.#setAvailablePeers([]),
      onError: (error) => this.#report(error),
    });
    const welcome = await this.#signaling.connect();
    if (welcome.node_id !== this.#nodeId) {
      this.#signaling.close();
      throw new Error(
        `the signaling socket belongs to node ${describePeer(welcome.node_id)}, ` +
          `not to ${describePeer(this.#nodeId)} named by ${this.#apiBase}/webrtc`,
      );
    }
    if (this.#closed) {
      this.#signaling.close();
      throw new Error('the client was closed');
    }
    this.#started = true;
  }

  #assertOpen() {
    if (this.#closed) {
      throw new Error('the client was closed');
    }
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async #requestJson(method, path, body) {
    const url = `${this.#apiBase}${path}`;
    let response;
    try {
      response = await fetch(url, {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
      });
    } catch (error) {
      throw new Error(`${method} ${url}: ${errorMessage(error)}`);
    }
    const text = await response.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      throw new Error(`${method} ${url}: HTTP ${response.status} with a body that is not JSON`);
    }
    if (!response.ok) {
      const detail = json?.message ?? json?.error ?? text;
      throw new Error(`${method} ${url}: HTTP ${response.status} ${json?.error ?? ''}: ${detail}`);
    }
    return json;
  }

  /** @param {Error} error */
  #report(error) {
    try {
      this.#callbacks.onError(error);
    } catch (callbackError) {
      console.error('meshcore-p2p: onError threw', callbackError);
    }
  }

  /**
   * Calls a user callback; its exceptions go to onError.
   * @param {string} name
   * @param {() => void} call
   */
  #notify(name, call) {
    try {
      call();
    } catch (error) {
      this.#report(new Error(`the ${name} callback threw: ${errorMessage(error)}`));
    }
  }

  /** @param {{node_id: string, peers: string[]}} welcome */
  #onWelcome(welcome) {
    if (this.#started && welcome.node_id !== this.#nodeId) {
      this.#report(
        new Error(`the reopened signaling socket belongs to ${describePeer(welcome.node_id)}`),
      );
    }
    this.#setAvailablePeers(welcome.peers);
  }

  /** @param {string[]} peerIds */
  #setAvailablePeers(peerIds) {
    this.#availablePeers = new Set(peerIds.filter((id) => id !== this.peerId));
    this.#availablePeersChanged();
  }

  #availablePeersChanged() {
    this.#notify('onAvailablePeersChanged', () =>
      this.#callbacks.onAvailablePeersChanged(this.availablePeers),
    );
  }

  /** @param {Record<string, any>} message */
  #queueSignal(message) {
    this.#signalTail = this.#signalTail
      .then(() => this.#handleSignal(message))
      .catch((error) => this.#report(error));
  }

  /** @param {Record<string, any>} message */
  async #handleSignal(message) {
    if (this.#closed) {
      return;
    }
    switch (message.type) {
      case 'peer_joined':
        if (PEER_ID_PATTERN.test(message.peer_id) && message.peer_id !== this.peerId) {
          this.#availablePeers.add(message.peer_id);
          this.#availablePeersChanged();
        }
        return;
      case 'peer_left':
        if (this.#availablePeers.delete(message.peer_id)) {
          this.#availablePeersChanged();
        }
        return;
      case 'offer':
        return this.#answerOffer(message);
      case 'answer':
        return this.#acceptAnswer(message);
      case 'candidate': {
        const link = this.#links.get(message.from);
        if (link && typeof message.candidate === 'object' && message.candidate !== null) {
          await link.addRemoteCandidate(message.candidate);
        }
        return;
      }
      case 'error': {
        const error = new Error(`signaling error ${message.error}: ${message.message ?? ''}`);
        const link = this.#links.get(message.to);
        if (link && link.state !== 'open') {
          link.close(error);
        } else {
          this.#report(error);
        }
        return;
      }
      default:
        throw new Error(`signaling: unexpected message type ${JSON.stringify(message.type)}`);
    }
  }

  /**
   * Answers a browser's offer once its binding signature verifies.
   * @param {Record<string, any>} offer
   */
  async #answerOffer({ from, sdp, signature }) {
    if (!PEER_ID_PATTERN.test(from) || from === this.peerId || from === this.#nodeId) {
      throw new Error(`signaling: an offer from ${JSON.stringify(from)} was ignored`);
    }
    if (!(await verifyBinding(from, sdp, signature))) {
      throw new Error(
        `the offer from ${describePeer(from)} does not carry its binding signature; ignored`,
      );
    }
    const existing = this.#links.get(from);
    if (existing) {
      // Both sides offered at once: the smaller id's offer wins, the other side answers it.
      const glare = existing.role === 'offerer' && existing.state === 'connecting';
      if (glare && this.peerId < from) {
        return;
      }
      existing.close(
        glare ? null : new Error('replaced by a new offer from the peer'),
        { superseded: true },
      );
    }
    const link = this.#createLink(from, 'browser', 'answerer');
    try {
      link.connection.ondatachannel = (event) => {
        if (event.channel.label !== DATA_CHANNEL_LABEL) {
          event.channel.close();
          link.fail(`opened a data channel labelled ${JSON.stringify(event.channel.label)}`);
          return;
        }
        link.attachChannel(event.channel);
      };
      await link.applyRemoteDescription({ type: 'offer', sdp });
      await link.connection.setLocalDescription();
      const answerSdp = link.connection.localDescription.sdp;
      this.#signaling.send({
        type: 'answer',
        to: from,
        sdp: answerSdp,
        signature: await this.#signBinding(answerSdp),
      });
      link.releaseLocalCandidates();
    } catch (error) {
      link.close(new Error(`answering ${describePeer(from)}: ${errorMessage(error)}`));
    }
  }

  /**
   * Applies a browser's answer to this client's offer once its binding signature verifies.
   * @param {Record<string, any>} answer
   */
  async #acceptAnswer({ from, sdp, signature }) {
    const link = this.#links.get(from);
    if (
      link?.role !== 'offerer' ||
      link.kind !== 'browser' ||
      link.connection.signalingState !== 'have-local-offer'
    ) {
      return;
    }
    if (!(await verifyBinding(from, sdp, signature))) {
      link.close(new Error(`the answer from ${describePeer(from)} is not signed by it`));
      return;
    }
    try {
      await link.applyRemoteDescription({ type: 'answer', sdp });
    } catch (error) {
      link.close(new Error(`the answer from ${describePeer(from)}: ${errorMessage(error)}`));
    }
  }

  /** Opens the data channel to the API's node: offer over HTTP, candidates over signaling. */
  #startNodeConnection() {
    const nodeId = this.#nodeId;
    const link = this.#createLink(nodeId, 'node', 'offerer');
    link.attachChannel(
      link.connection.createDataChannel(DATA_CHANNEL_LABEL, { ordered: true }),
    );
    const negotiate = async () => {
      await link.connection.setLocalDescription();
      const sdp = link.connection.localDescription.sdp;
      const answer = await this.#requestJson('POST', '/connect', {
        peer_id: this.peerId,
        peer_info: { sdp, signature: await this.#signBinding(sdp) },
      });
      if (answer?.peer_id !== nodeId || typeof answer.sdp !== 'string') {
        throw new Error(`POST ${this.#apiBase}/connect: the answer is not from ${describePeer(nodeId)}`);
      }
      if (!(await verifyBinding(nodeId, answer.sdp, answer.signature))) {
        throw new Error(
          `the answer's DTLS fingerprint is not signed by node ${describePeer(nodeId)}`,
        );
      }
      await link.applyRemoteDescription({ type: 'answer', sdp: answer.sdp });
      link.releaseLocalCandidates();
    };
    negotiate().catch((error) => link.close(asError(error)));
  }

  /**
   * Offers a data channel to a browser over the signaling socket.
   * @param {string} peerId
   */
  #startBrowserOffer(peerId) {
    const link = this.#createLink(peerId, 'browser', 'offerer');
    link.attachChannel(
      link.connection.createDataChannel(DATA_CHANNEL_LABEL, { ordered: true }),
    );
    const negotiate = async () => {
      await link.connection.setLocalDescription();
      const sdp = link.connection.localDescription.sdp;
      this.#signaling.send({
        type: 'offer',
        to: peerId,
        sdp,
        signature: await this.#signBinding(sdp),
      });
      link.releaseLocalCandidates();
    };
    negotiate().catch((error) => link.close(asError(error)));
  }

  /**
   * @param {string} peerId
   * @param {'node' | 'browser'} kind
   * @param {'offerer' | 'answerer'} role
   * @returns {PeerLink}
   */
  #createLink(peerId, kind, role) {
    const link = new PeerLink({
      peerId,
      kind,
      role,
      connection: new RTCPeerConnection({ iceServers: this.#iceServers }),
      events: {
        onOpen: (opened) => {
          this.#settleOpenWaiters(opened.peerId, null);
          this.#notify('onPeerConnected', () => this.#callbacks.onPeerConnected(opened.peerId));
        },
        onClosed: (closed, reason, { wasOpen, superseded }) =>
          this.#onLinkClosed(closed, reason, wasOpen, superseded),
        onApp: (from, data) =>
          this.#notify('onMessage', () => this.#callbacks.onMessage(from.peerId, data)),
        // A peer elsewhere on the mesh, carried by the node (PROTOCOL.md, MESH_MESSAGE).
        onMeshMessage: (sourceId, data) =>
          this.#notify('onMessage', () => this.#callbacks.onMessage(sourceId, data)),
        onLocalCandidate: (from, candidate) => {
          // Without signaling the candidate is lost; the peer still learns this address
          // from connectivity checks (a peer-reflexive candidate).
          if (this.#signaling?.registered) {
            this.#signaling.send({ type: 'candidate', to: from.peerId, candidate });
          }
        },
        onError: (error) => this.#report(error),
      },
    });
    this.#links.set(peerId, link);
    return link;
  }

  /**
   * @param {PeerLink} link
   * @param {Error | null} reason
   * @param {boolean} wasOpen
   * @param {boolean} superseded
   */
  #onLinkClosed(link, reason, wasOpen, superseded) {
    if (this.#links.get(link.peerId) === link) {
      this.#links.delete(link.peerId);
    }
    if (wasOpen) {
      this.#notify('onPeerDisconnected', () => this.#callbacks.onPeerDisconnected(link.peerId));
    }
    if (superseded) {
      return;
    }
    const failure = reason ?? new Error(`the connection to ${describePeer(link.peerId)} closed`);
    const waited = this.#settleOpenWaiters(link.peerId, failure);
    if (reason && (wasOpen || !waited)) {
      this.#report(reason);
    }
  }

  /**
   * Resolves when a data channel to `peerId` opens; rejects when its connection fails.
   * @param {string} peerId
   * @returns {Promise<void>}
   */
  #awaitOpen(peerId) {
    return new Promise((resolve, reject) => {
      let waiters = this.#openWaiters.get(peerId);
      if (!waiters) {
        waiters = new Set();
        this.#openWaiters.set(peerId, waiters);
      }
      waiters.add({ resolve, reject });
    });
  }

  /**
   * @param {string} peerId
   * @param {Error | null} error
   * @returns {boolean} Whether anyone was waiting.
   */
  #settleOpenWaiters(peerId, error) {
    const waiters = this.#openWaiters.get(peerId);
    this.#openWaiters.delete(peerId);
    for (const waiter of waiters ?? []) {
      if (error) {
        waiter.reject(error);
      } else {
        waiter.resolve();
      }
    }
    return (waiters?.size ?? 0) > 0;
  }

  /** @returns {PeerLink} The open data channel to the API's node. */
  #openNodeLink() {
    this.#assertOpen();
    const link = this.#nodeId === null ? undefined : this.#links.get(this.#nodeId);
    if (link?.state !== 'open') {
      throw new Error('not connected to the node: call connectToPeer(nodeId) first');
    }
    return link;
  }

  /**
   * Signs the binding of the DTLS fingerprint in this client's own `sdp` to its id.
   * @param {string} sdp
   * @returns {Promise<string>}
   */
  async #signBinding(sdp) {
    const text = bindingText(this.peerId, sdpFingerprint(sdp));
    return signText(this.#identity.privateKey, 'dtls-fingerprint', text);
  }
}

export default MeshcoreP2P;

/**
 * Diagnostic exchanges with the API's node over its data channel, to measure latency and
 * throughput and to check integrity (PROTOCOL.md: ECHO, SOURCE, SINK). Needs an open
 * channel to the node ({@link MeshcoreP2P#connectToPeer}); not part of the specification's
 * API.
 */
export class MeshcoreDiagnostics {
  /** @type {() => PeerLink} */
  #nodeLink;
  #uploading = false;

  /**
   * @param {() => PeerLink} nodeLink Returns the open link to the node or throws.
   */
  constructor(nodeLink) {
    this.#nodeLink = nodeLink;
  }

  /**
   * Sends one ECHO and resolves with the node's ECHO_REPLY body.
   * @param {Uint8Array} bytes At most 64 KiB.
   * @returns {Promise<Uint8Array>}
   */
  async echo(bytes) {
    checkBodySize('an ECHO', bytes.byteLength);
    return this.#nodeLink().echo(bytes);
  }

  /**
   * Echoes `totalBytes` of generated data through the node in ECHO messages of `chunk`
   * bytes, keeping at most 4 MiB in flight, and hashes what went out and what came back.
   * @param {number} totalBytes
   * @param {number} [chunk=16384] At most 64 KiB.
   * @returns {Promise<EchoStreamResult>}
   */
  async echoStream(totalBytes, chunk = 16 * 1024) {
    checkTransfer(totalBytes, chunk);
    const link = this.#nodeLink();
    const sent = patternBytes(totalBytes);
    const received = new Uint8Array(totalBytes);
    /** @type {{reply: Promise<Uint8Array>, offset: number, length: number}[]} */
    const inFlight = [];
    let bytesInFlight = 0;
    const settleOldest = async () => {
      const { reply, offset, length } = inFlight.shift();
      const bytes = await reply;
      if (bytes.byteLength !== length) {
        throw new Error(`an ECHO of ${length} bytes came back with ${bytes.byteLength}`);
      }
      received.set(bytes, offset);
      bytesInFlight -= length;
    };
    const started = performance.now();
    for (let offset = 0; offset < totalBytes; offset += chunk) {
      const length = Math.min(chunk, totalBytes - offset);
      while (bytesInFlight + length > ECHO_WINDOW_BYTES) {
        await settleOldest();
      }
      const reply = link.echo(sent.subarray(offset, offset + length));
      reply.catch(() => {});
      inFlight.push({ reply, offset, length });
      bytesInFlight += length;
    }
    while (inFlight.length > 0) {
      await settleOldest();
    }
    const ms = performance.now() - started;
    const [sentSha256, receivedSha256] = await Promise.all([sha256Hex(sent), sha256Hex(received)]);
    return { sentSha256, receivedSha256, bytes: totalBytes, ms };
  }

  /**
   * Sends `totalBytes` of generated data to the node in SINK messages of `chunk` bytes,
   * then SINK_END, and resolves with the node's SINK_REPORT beside the local hash.
   * @param {number} totalBytes
   * @param {number} [chunk=16384] At most 64 KiB.
   * @returns {Promise<TransferResult>}
   */
  async upload(totalBytes, chunk = 16 * 1024) {
    checkTransfer(totalBytes, chunk);
    const link = this.#nodeLink();
    if (this.#uploading) {
      throw new Error('an upload is already running');
    }
    this.#uploading = true;
    try {
      const data = patternBytes(totalBytes);
      const started = performance.now();
      for (let offset = 0; offset < totalBytes; offset += chunk) {
        await link.send(taggedFrame(Tag.SINK, data.subarray(offset, offset + chunk)));
      }
      const report = await link.sinkEnd();
      const ms = performance.now() - started;
      if (report.total !== totalBytes) {
        throw new Error(`the node counted ${report.total} of the ${totalBytes} bytes uploaded`);
      }
      return { bytes: totalBytes, ms, sha256Local: await sha256Hex(data), sha256Node: report.sha256 };
    } finally {
      this.#uploading = false;
    }
  }

  /**
   * Asks the node for `totalBytes` (SOURCE), collects its SOURCE_DATA until SOURCE_END and
   * resolves with the node's hash beside the hash of what arrived.
   * @param {number} totalBytes At most 1 GiB.
   * @returns {Promise<TransferResult>}
   */
  async download(totalBytes) {
    if (!Number.isSafeInteger(totalBytes) || totalBytes < 0 || totalBytes > MAX_SOURCE_BYTES) {
      throw new RangeError(`totalBytes must be an integer from 0 to ${MAX_SOURCE_BYTES}`);
    }
    const started = performance.now();
    const { data, sha256 } = await this.#nodeLink().download(totalBytes);
    const ms = performance.now() - started;
    return { bytes: totalBytes, ms, sha256Local: await sha256Hex(data), sha256Node: sha256 };
  }
}

/**
 * One RTCPeerConnection and its data channel to one peer: sends with backpressure, decodes
 * and dispatches the peer's messages, and matches replies to requests.
 */
class PeerLink {
  /** @type {string} */
  peerId;
  /** @type {'node' | 'browser'} */
  kind;
  /** @type {'offerer' | 'answerer'} */
  role;
  /** @type {RTCPeerConnection} */
  connection;
  /** @type {'connecting' | 'open' | 'closed'} */
  state = 'connecting';

  #events;
  /** @type {RTCDataChannel | null} */
  #channel = null;
  #openTimer;
  /** Sends go out one after another, in call order. */
  #sendTail = Promise.resolve();
  /** @type {(() => void) | null} Wakes a send waiting for the buffer to drain. */
  #wakeSender = null;
  /** @type {RTCIceCandidateInit[] | null} Local candidates held until the peer can use them. */
  #heldCandidates = [];
  /** @type {RTCIceCandidateInit[]} Remote candidates that came before the remote description. */
  #queuedCandidates = [];
  #nextSeq = 1;
  #nextRequest = 1;
  #appAcks = new KeyedReplies();
  #meshResults = new KeyedReplies();
  #echoReplies = new OrderedReplies();
  #sinkReports = new OrderedReplies();
  /** @type {SourceTransfer | null} */
  #source = null;

  /**
   * @param {object} init
   * @param {string} init.peerId
   * @param {'node' | 'browser'} init.kind
   * @param {'offerer' | 'answerer'} init.role
   * @param {RTCPeerConnection} init.connection
   * @param {{
   *   onOpen: (link: PeerLink) => void,
   *   onClosed: (link: PeerLink, reason: Error | null,
   *     how: {wasOpen: boolean, superseded: boolean}) => void,
   *   onApp: (link: PeerLink, data: unknown) => void,
   *   onMeshMessage: (sourceId: string, data: unknown, hops: number) => void,
   *   onLocalCandidate: (link: PeerLink, candidate: RTCIceCandidateInit) => void,
   *   onError: (error: Error) => void,
   * }} init.events
   */
  constructor({ peerId, kind, role, connection, events }) {
    this.peerId = peerId;
    this.kind = kind;
    this.role = role;
    this.connection = connection;
    this.#events = events;
    this.#openTimer = setTimeout(
      () =>
        this.close(
          new Error(
            `the data channel to ${kind} ${describePeer(peerId)} did not open within ` +
              `${OPEN_TIMEOUT_MS / 1000} s`,
          ),
        ),
      OPEN_TIMEOUT_MS,
    );
    connection.onicecandidate = ({ candidate }) => {
      if (!candidate?.candidate) {
        return;
      }
      const init = candidate.toJSON();
      if (this.#heldCandidates) {
        this.#heldCandidates.push(init);
      } else {
        this.#events.onLocalCandidate(this, init);
      }
    };
    connection.onconnectionstatechange = () => {
      if (connection.connectionState === 'failed') {
        this.close(new Error(`the connection to ${describePeer(peerId)} failed (ICE or DTLS)`));
      }
    };
  }

  /**
   * Takes over the connection's data channel.
   * @param {RTCDataChannel} channel
   */
  attachChannel(channel) {
    if (this.#channel) {
      this.fail('opened a second data channel');
      return;
    }
    this.#channel = channel;
    channel.binaryType = 'arraybuffer';
    channel.bufferedAmountLowThreshold = SEND_BUFFER_LOW_BYTES;
    channel.onopen = () => this.#onOpen();
    channel.onclose = () => this.close(null);
    channel.onerror = (event) => {
      if (this.state !== 'closed') {
        this.close(new Error(`data channel error: ${event.error?.message ?? 'unknown'}`));
      }
    };
    channel.onbufferedamountlow = () => this.#wakeSender?.();
    channel.onmessage = (event) => this.#receive(event.data);
    if (channel.readyState === 'open') {
      this.#onOpen();
    }
  }

  /**
   * Sets the peer's description, then adds the candidates that came before it.
   * @param {RTCSessionDescriptionInit} description
   */
  async applyRemoteDescription(description) {
    await this.connection.setRemoteDescription(description);
    const queued = this.#queuedCandidates;
    this.#queuedCandidates = [];
    for (const candidate of queued) {
      await this.#addCandidate(candidate);
    }
  }

  /**
   * Adds a trickled candidate of the peer, or keeps it until the remote description is set.
   * @param {RTCIceCandidateInit} candidate
   */
  async addRemoteCandidate(candidate) {
    if (this.state === 'closed') {
      return;
    }
    if (this.connection.remoteDescription) {
      await this.#addCandidate(candidate);
    } else if (this.#queuedCandidates.length < MAX_QUEUED_CANDIDATES) {
      this.#queuedCandidates.push(candidate);
    }
  }

  /** Sends the local candidates held so far, and the later ones as they come. */
  releaseLocalCandidates() {
    const held = this.#heldCandidates ?? [];
    this.#heldCandidates = null;
    for (const candidate of held) {
      this.#events.onLocalCandidate(this, candidate);
    }
  }

  /**
   * Queues one message; resolves when the channel has taken it, waiting while more than
   * 8 MiB are buffered. Messages go out in call order.
   * @param {Uint8Array<ArrayBuffer>} frame
   * @returns {Promise<void>}
   */
  send(frame) {
    const sent = this.#sendTail.then(() => this.#transmit(frame));
    this.#sendTail = sent.catch(() => {});
    return sent;
  }

  /**
   * Sends an APP and resolves on its APP_ACK.
   * @param {Uint8Array} payload
   * @returns {Promise<DeliveryResult>}
   */
  async sendApp(payload) {
    const seq = this.#nextSeq;
    this.#nextSeq = (this.#nextSeq + 1) >>> 0;
    const started = performance.now();
    const acked = this.#appAcks.wait(
      seq,
      APP_ACK_TIMEOUT_MS,
      `no APP_ACK from ${describePeer(this.peerId)} within ${APP_ACK_TIMEOUT_MS / 1000} s`,
    );
    this.send(appFrame(seq, payload)).catch((error) => this.#appAcks.reject(seq, error));
    await acked;
    return { delivered: true, hops: 0, rtt_ms: Math.round((performance.now() - started) * 10) / 10 };
  }

  /**
   * Asks the node to carry `payload` to `destination` across the mesh.
   * @param {Uint8Array} destination 32 bytes.
   * @param {Uint8Array} payload
   * @param {{id: Uint8Array, timestamp: number, signature: Uint8Array}} signed The
   *   message id (16 bytes), when it was signed (Unix ms) and this client's signature.
   * @returns {Promise<DeliveryResult>}
   */
  async meshSend(destination, payload, signed) {
    const request = this.#nextRequest;
    this.#nextRequest = (this.#nextRequest + 1) >>> 0;
    const result = this.#meshResults.wait(
      request,
      MESH_RESULT_TIMEOUT_MS,
      `the node reported nothing on a mesh send within ${MESH_RESULT_TIMEOUT_MS / 1000} s`,
    );
    this.send(meshSendFrame(request, destination, signed, payload)).catch((error) =>
      this.#meshResults.reject(request, error),
    );
    return result;
  }

  /**
   * Sends one ECHO; resolves with the matching ECHO_REPLY body.
   * @param {Uint8Array} bytes
   * @returns {Promise<Uint8Array>}
   */
  echo(bytes) {
    const reply = this.#echoReplies.wait(
      DIAGNOSTIC_IDLE_TIMEOUT_MS,
      `no ECHO_REPLY within ${DIAGNOSTIC_IDLE_TIMEOUT_MS / 1000} s`,
    );
    this.send(taggedFrame(Tag.ECHO, bytes)).catch((error) => reply.fail(error));
    return reply.promise;
  }

  /**
   * Sends SINK_END; resolves with the node's SINK_REPORT.
   * @returns {Promise<{total: number, sha256: string}>}
   */
  sinkEnd() {
    const report = this.#sinkReports.wait(
      DIAGNOSTIC_IDLE_TIMEOUT_MS,
      `no SINK_REPORT within ${DIAGNOSTIC_IDLE_TIMEOUT_MS / 1000} s`,
    );
    this.send(Uint8Array.of(Tag.SINK_END)).catch((error) => report.fail(error));
    return report.promise;
  }

  /**
   * Sends SOURCE; resolves with the SOURCE_DATA bodies and the SOURCE_END hash.
   * @param {number} totalBytes
   * @returns {Promise<{data: Uint8Array<ArrayBuffer>, sha256: string}>}
   */
  download(totalBytes) {
    if (this.#source) {
      return Promise.reject(new Error('a download is already running on this connection'));
    }
    const transfer = new SourceTransfer(totalBytes);
    this.#source = transfer;
    this.send(u64Frame(Tag.SOURCE, totalBytes)).catch((error) => transfer.fail(error));
    return transfer.promise;
  }

  /** @returns {Promise<PeerStats>} */
  async stats() {
    let bytesSent = 0;
    let bytesReceived = 0;
    let rttMs = null;
    const report = this.state === 'closed' ? new Map() : await this.connection.getStats();
    for (const entry of report.values()) {
      if (entry.type === 'data-channel') {
        bytesSent += entry.bytesSent ?? 0;
        bytesReceived += entry.bytesReceived ?? 0;
      } else if (entry.type === 'transport' && entry.selectedCandidatePairId) {
        const pair = report.get(entry.selectedCandidatePairId);
        if (typeof pair?.currentRoundTripTime === 'number') {
          rttMs = pair.currentRoundTripTime * 1000;
        }
      }
    }
    return { peerId: this.peerId, type: this.kind, state: this.state, bytesSent, bytesReceived, rttMs };
  }

  /**
   * Closes the connection for a protocol violation by the peer and reports it.
   * @param {string} what What the peer did.
   */
  fail(what) {
    this.close(new Error(`${this.kind} ${describePeer(this.peerId)} ${what}; connection closed`));
  }

  /**
   * Closes the connection; pending requests reject.
   * @param {Error | null} reason Why, or null for an orderly close.
   * @param {{superseded?: boolean}} [how] `superseded`: a new connection to the same peer
   *   replaces this one.
   */
  close(reason, { superseded = false } = {}) {
    if (this.state === 'closed') {
      return;
    }
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    clearTimeout(this.#openTimer);
    this.#channel?.close();
    this.connection.close();
    this.#wakeSender?.();
    const failure = new Error(
      `the connection to ${describePeer(this.peerId)} closed` +
        (reason ? `: ${reason.message}` : ''),
    );
    this.#appAcks.rejectAll(failure);
    this.#meshResults.rejectAll(failure);
    this.#echoReplies.rejectAll(failure);
    this.#sinkReports.rejectAll(failure);
    this.#source?.fail(failure);
    this.#source = null;
    this.#events.onClosed(this, reason, { wasOpen, superseded });
  }

  #onOpen() {
    if (this.state !== 'connecting') {
      return;
    }
    this.state = 'open';
    clearTimeout(this.#openTimer);
    this.#events.onOpen(this);
  }

  /** @param {RTCIceCandidateInit} candidate */
  async #addCandidate(candidate) {
    const remoteUfrag = /^a=ice-ufrag:(\S+)/m.exec(this.connection.remoteDescription?.sdp ?? '');
    if (candidate.usernameFragment && remoteUfrag && candidate.usernameFragment !== remoteUfrag[1]) {
      // A candidate of an offer the peer abandoned (both sides offered at once).
      return;
    }
    try {
      await this.connection.addIceCandidate(candidate);
    } catch (error) {
      this.#events.onError(
        new Error(`a candidate from ${describePeer(this.peerId)} was refused: ${errorMessage(error)}`),
      );
    }
  }

  /** @param {Uint8Array<ArrayBuffer>} frame */
  async #transmit(frame) {
    for (;;) {
      if (this.state !== 'open') {
        throw new Error(`the data channel to ${describePeer(this.peerId)} is not open`);
      }
      if (this.#channel.bufferedAmount + frame.byteLength <= SEND_BUFFER_LIMIT_BYTES) {
        break;
      }
      await new Promise((resolve) => {
        this.#wakeSender = () => resolve(undefined);
      });
      this.#wakeSender = null;
    }
    this.#channel.send(frame);
  }

  /** @param {ArrayBuffer | string} data */
  #receive(data) {
    if (this.state === 'closed') {
      return;
    }
    if (typeof data === 'string') {
      this.fail('sent a text message (the protocol is binary)');
      return;
    }
    let message;
    try {
      message = decodeFrame(new Uint8Array(data));
      if (this.kind === 'browser' && !BROWSER_TAGS.has(message.tag)) {
        throw new ProtocolError(`a node-only message (tag 0x${hexByte(message.tag)})`);
      }
      this.#dispatch(message);
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.fail(`sent a malformed message: ${error.message}`);
      } else {
        this.#events.onError(asError(error));
      }
    }
  }

  /**
   * Acknowledges an APP or MESH_MESSAGE (APP_ACK of its seq) and returns what its payload
   * hands to onMessage.
   * @param {{seq: number, payload: Uint8Array}} message
   * @param {string} name The message's name, for the error.
   * @returns {unknown}
   * @throws {ProtocolError} When the payload is not UTF-8.
   */
  #acknowledge(message, name) {
    let text;
    try {
      text = strictUtf8Decoder.decode(message.payload);
    } catch {
      throw new ProtocolError(`${name} payload that is not UTF-8`);
    }
    this.send(u32Frame(Tag.APP_ACK, message.seq)).catch(() => {});
    return parseAppText(text);
  }

  /** @param {DecodedFrame} message */
  #dispatch(message) {
    switch (message.tag) {
      case Tag.PING:
        this.send(u64Frame(Tag.PONG, message.value)).catch(() => {});
        return;
      case Tag.PONG:
        return;
      case Tag.APP:
        this.#events.onApp(this, this.#acknowledge(message, 'an APP'));
        return;
      case Tag.MESH_MESSAGE:
        this.#events.onMeshMessage(message.source, this.#acknowledge(message, 'a MESH_MESSAGE'), message.hops);
        return;
      case Tag.APP_ACK:
        this.#appAcks.resolve(message.seq, undefined);
        return;
      case Tag.MESH_RESULT:
        if (message.status === 0) {
          this.#meshResults.resolve(message.request, {
            delivered: true,
            hops: message.hops,
            rtt_ms: message.rttMs,
          });
        } else {
          this.#meshResults.reject(
            message.request,
            new Error(`the mesh did not deliver the message: ${message.errorText}`),
          );
        }
        return;
      case Tag.ECHO_REPLY:
        if (!this.#echoReplies.settleOldest(message.bytes)) {
          throw new ProtocolError('an ECHO_REPLY to no ECHO');
        }
        return;
      case Tag.SINK_REPORT:
        if (!this.#sinkReports.settleOldest({ total: message.total, sha256: message.sha256 })) {
          throw new ProtocolError('a SINK_REPORT to no SINK_END');
        }
        return;
      case Tag.SOURCE_DATA:
        if (!this.#source) {
          throw new ProtocolError('SOURCE_DATA to no SOURCE');
        }
        this.#source.receive(message.bytes);
        return;
      case Tag.SOURCE_END:
        if (!this.#source) {
          throw new ProtocolError('a SOURCE_END to no SOURCE');
        }
        this.#source.end(message.total, message.sha256);
        this.#source = null;
    }
  }
}

/** A peer broke the data-channel protocol. */
class ProtocolError extends Error {}

/** One running SOURCE request: collects SOURCE_DATA into a buffer of the requested size. */
class SourceTransfer {
  /** @type {Promise<{data: Uint8Array<ArrayBuffer>, sha256: string}>} */
  promise;
  #data;
  #received = 0;
  #resolve;
  #reject;
  #idleTimer;
  #settled = false;

  /** @param {number} totalBytes */
  constructor(totalBytes) {
    this.#data = new Uint8Array(totalBytes);
    this.promise = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.#armIdleTimer();
  }

  /** @param {Uint8Array} bytes A SOURCE_DATA body. */
  receive(bytes) {
    if (this.#received + bytes.byteLength > this.#data.byteLength) {
      throw new ProtocolError(`more SOURCE_DATA than the ${this.#data.byteLength} bytes asked for`);
    }
    this.#data.set(bytes, this.#received);
    this.#received += bytes.byteLength;
    this.#armIdleTimer();
  }

  /**
   * @param {number} total The SOURCE_END total.
   * @param {string} sha256 The SOURCE_END hash (hex).
   */
  end(total, sha256) {
    if (total !== this.#received) {
      throw new ProtocolError(`a SOURCE_END of ${total} bytes after ${this.#received}`);
    }
    if (total !== this.#data.byteLength) {
      this.fail(new Error(`the node sent ${total} of the ${this.#data.byteLength} bytes asked for`));
      return;
    }
    this.#settle();
    this.#resolve({ data: this.#data, sha256 });
  }

  /** @param {Error} error */
  fail(error) {
    if (!this.#settled) {
      this.#settle();
      this.#reject(error);
    }
  }

  #settle() {
    this.#settled = true;
    clearTimeout(this.#idleTimer);
  }

  #armIdleTimer() {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(
      () => this.fail(new Error(`the download stalled for ${DIAGNOSTIC_IDLE_TIMEOUT_MS / 1000} s`)),
      DIAGNOSTIC_IDLE_TIMEOUT_MS,
    );
  }
}

/** Replies matched to requests by a number (APP_ACK by seq, MESH_RESULT by request). */
class KeyedReplies {
  /** @type {Map<number, {resolve: (value: any) => void, reject: (error: Error) => void, timer: ReturnType<typeof setTimeout>}>} */
  #pending = new Map();

  /**
   * @param {number} key
   * @param {number} timeoutMs
   * @param {string} timeoutMessage
   * @returns {Promise<any>}
   */
  wait(key, timeoutMs, timeoutMessage) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.reject(key, new Error(timeoutMessage)), timeoutMs);
      this.#pending.set(key, { resolve, reject, timer });
    });
  }

  /**
   * Settles the request `key`; a reply to an unknown or timed-out request is dropped.
   * @param {number} key
   * @param {unknown} value
   */
  resolve(key, value) {
    const entry = this.#take(key);
    entry?.resolve(value);
  }

  /**
   * @param {number} key
   * @param {Error} error
   */
  reject(key, error) {
    const entry = this.#take(key);
    entry?.reject(error);
  }

  /** @param {Error} error */
  rejectAll(error) {
    for (const key of [...this.#pending.keys()]) {
      this.reject(key, error);
    }
  }

  /** @param {number} key */
  #take(key) {
    const entry = this.#pending.get(key);
    if (entry) {
      this.#pending.delete(key);
      clearTimeout(entry.timer);
    }
    return entry;
  }
}

/**
 * Replies that come in request order (ECHO_REPLY, SINK_REPORT). A request that timed out
 * keeps its place, so a late reply is consumed by it rather than by the next request.
 */
class OrderedReplies {
  /** @type {{settle: (value: unknown, error?: Error) => void}[]} */
  #queue = [];

  /**
   * @param {number} timeoutMs
   * @param {string} timeoutMessage
   * @returns {{promise: Promise<any>, fail: (error: Error) => void}}
   */
  wait(timeoutMs, timeoutMessage) {
    let settled = false;
    let timer;
    let settle;
    const promise = new Promise((resolve, reject) => {
      settle = (value, error) => {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (error) {
          reject(error);
        } else {
          resolve(value);
        }
      };
    });
    timer = setTimeout(() => settle(undefined, new Error(timeoutMessage)), timeoutMs);
    this.#queue.push({ settle });
    return { promise, fail: (error) => settle(undefined, error) };
  }

  /**
   * Hands a reply to the oldest request.
   * @param {unknown} value
   * @returns {boolean} False when no request was waiting.
   */
  settleOldest(value) {
    const entry = this.#queue.shift();
    entry?.settle(value);
    return entry !== undefined;
  }

  /** @param {Error} error */
  rejectAll(error) {
    for (const entry of this.#queue.splice(0)) {
      entry.settle(undefined, error);
    }
  }
}

/**
 * The node's signaling WebSocket: registers this client (challenge, hello, welcome),
 * delivers the relayed messages, and reopens after a drop with a growing delay.
 */
class SignalingSocket {
  #url;
  #identity;
  #nodeId;
  #events;
  /** @type {WebSocket | null} */
  #socket = null;
  #registered = false;
  #closed = false;
  #retryMs = RECONNECT_MIN_MS;
  #retryTimer;

  /**
   * @param {string} url
   * @param {Identity} identity
   * @param {string} nodeId The node whose socket this is (its id is in the signed hello).
   * @param {{
   *   onWelcome: (welcome: {node_id: string, peers: string[]}) => void,
   *   onMessage: (message: Record<string, any>) => void,
   *   onDisconnected: () => void,
   *   onError: (error: Error) => void,
   * }} events
   */
  constructor(url, identity, nodeId, events) {
    this.#url = url;
    this.#identity = identity;
    this.#nodeId = nodeId;
    this.#events = events;
  }

  /**
   * Opens the socket and resolves with the first welcome; rejects if registration fails or
   * takes more than 10 s. Later drops are reopened without rejecting anything.
   * @returns {Promise<{node_id: string, peers: string[]}>}
   */
  connect() {
    return new Promise((resolve, reject) => this.#open({ resolve, reject }));
  }

  /** Whether the node has welcomed this client on the current socket. */
  get registered() {
    return this.#registered;
  }

  /**
   * Sends a message once registered.
   * @param {Record<string, unknown>} message
   * @throws {Error} When the socket is not registered (the message would be lost).
   */
  send(message) {
    if (!this.#registered) {
      throw new Error('the signaling socket is not registered');
    }
    this.#socket.send(JSON.stringify(message));
  }

  /** Closes the socket for good. */
  close() {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#socket?.close(1000);
  }

  /**
   * @param {{resolve: (welcome: any) => void, reject: (error: Error) => void} | null} first
   *   The first registration's promise, or null when reopening.
   */
  #open(first) {
    let socket;
    try {
      socket = new WebSocket(this.#url);
    } catch (error) {
      first?.reject(new Error(`signaling ${this.#url}: ${errorMessage(error)}`));
      return;
    }
    this.#socket = socket;
    const registerTimer = setTimeout(() => {
      first?.reject(new Error(`signaling ${this.#url}: not registered within ${REGISTER_TIMEOUT_MS / 1000} s`));
      socket.close();
    }, REGISTER_TIMEOUT_MS);
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        this.#events.onError(new Error('signaling: a frame that is not JSON'));
        return;
      }
      if (typeof message !== 'object' || message === null) {
        this.#events.onError(new Error('signaling: a frame that is not a JSON object'));
        return;
      }
      this.#handle(socket, message, first, registerTimer);
    };
    socket.onclose = (event) => {
      clearTimeout(registerTimer);
      const wasRegistered = this.#registered && this.#socket === socket;
      if (this.#socket === socket) {
        this.#socket = null;
        this.#registered = false;
      }
      if (first && !wasRegistered) {
        first.reject(
          this.#closed
            ? new Error('the client was closed')
            : new Error(`signaling ${this.#url}: closed before registering (code ${event.code})`),
        );
        return;
      }
      if (this.#closed) {
        return;
      }
      if (wasRegistered) {
        this.#events.onDisconnected();
        this.#events.onError(new Error(`signaling socket closed (code ${event.code}); reopening`));
      }
      this.#retryTimer = setTimeout(() => this.#open(null), this.#retryMs);
      this.#retryMs = Math.min(this.#retryMs * 2, RECONNECT_MAX_MS);
    };
  }

  /**
   * @param {WebSocket} socket
   * @param {Record<string, any>} message
   * @param {{resolve: (welcome: any) => void, reject: (error: Error) => void} | null} first
   * @param {ReturnType<typeof setTimeout>} registerTimer
   */
  #handle(socket, message, first, registerTimer) {
    switch (message.type) {
      case 'challenge':
        if (typeof message.nonce !== 'string' || !/^[0-9a-f]{64}$/.test(message.nonce)) {
          this.#events.onError(new Error('signaling: a challenge without a 64-hex nonce'));
          socket.close();
          return;
        }
        signText(this.#identity.privateKey, 'signal-hello', `${message.nonce}\n${this.#nodeId}`).then(
          (signature) => {
            if (socket.readyState === WebSocket.OPEN) {
              socket.send(JSON.stringify({ type: 'hello', peer_id: this.#identity.id, signature }));
            }
          },
          (error) => this.#events.onError(new Error(`signaling: signing the hello failed: ${errorMessage(error)}`)),
        );
        return;
      case 'welcome': {
        const peers = Array.isArray(message.peers)
          ? message.peers.filter((id) => typeof id === 'string' && PEER_ID_PATTERN.test(id))
          : [];
        const welcome = { node_id: String(message.node_id), peers };
        clearTimeout(registerTimer);
        this.#registered = true;
        this.#retryMs = RECONNECT_MIN_MS;
        this.#events.onWelcome(welcome);
        first?.resolve(welcome);
        return;
      }
      case 'error': {
        const error = new Error(`signaling error ${message.error}: ${message.message ?? ''}`);
        if (this.#registered && PEER_ID_PATTERN.test(message.to ?? '')) {
          // About one peer (unknown, busy): the client fails the connection to it.
          this.#events.onMessage(message);
        } else if (this.#registered) {
          this.#events.onError(error);
        } else if (first) {
          // The registration was refused: the first connect fails (and reports) with it.
          first.reject(error);
          socket.close();
        } else {
          this.#events.onError(error);
          socket.close();
        }
        return;
      }
      default:
        if (!this.#registered) {
          this.#events.onError(new Error(`signaling: ${JSON.stringify(message.type)} before the welcome`));
          return;
        }
        if (message.type === 'offer' || message.type === 'answer' || message.type === 'candidate') {
          if (!PEER_ID_PATTERN.test(message.from ?? '')) {
            this.#events.onError(new Error(`signaling: a relayed ${message.type} without a sender`));
            return;
          }
        }
        this.#events.onMessage(message);
    }
  }
}

// Identity: Ed25519 keys in IndexedDB, signatures over UTF-8 texts.

/**
 * Loads the identity stored under `name`, or creates and stores one. Concurrent first
 * loads (two tabs) agree on one key: the store keeps whichever was added first.
 * @param {string} name
 * @returns {Promise<Identity>}
 */
async function loadIdentity(name) {
  const db = await openIdentityDb();
  try {
    let keys = await idbRequest(db.transaction(IDENTITY_STORE).objectStore(IDENTITY_STORE).get(name));
    if (keys === undefined) {
      const generated = await generateKeyPair();
      const store = db.transaction(IDENTITY_STORE, 'readwrite').objectStore(IDENTITY_STORE);
      const existing = await idbRequest(store.get(name));
      if (existing === undefined) {
        await idbRequest(store.add({ privateKey: generated.privateKey, publicKey: generated.publicKey }, name));
      }
      keys = existing ?? generated;
    }
    if (!(keys?.privateKey instanceof CryptoKey) || !(keys.publicKey instanceof CryptoKey)) {
      throw new Error(`the stored identity ${JSON.stringify(name)} is not an Ed25519 key pair`);
    }
    const raw = new Uint8Array(await crypto.subtle.exportKey('raw', keys.publicKey));
    return { privateKey: keys.privateKey, publicKey: keys.publicKey, id: bytesToHex(raw) };
  } finally {
    db.close();
  }
}

/** @returns {Promise<CryptoKeyPair>} */
async function generateKeyPair() {
  try {
    return /** @type {CryptoKeyPair} */ (
      await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify'])
    );
  } catch (error) {
    throw new Error(`this browser cannot create Ed25519 keys with WebCrypto: ${errorMessage(error)}`);
  }
}

/** @returns {Promise<IDBDatabase>} */
function openIdentityDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(IDENTITY_DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(IDENTITY_STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(new Error(`IndexedDB ${IDENTITY_DB_NAME}: ${request.error?.message}`));
    request.onblocked = () => reject(new Error(`IndexedDB ${IDENTITY_DB_NAME} is blocked by another tab`));
  });
}

/**
 * @param {IDBRequest} request
 * @returns {Promise<any>}
 */
function idbRequest(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(new Error(`IndexedDB: ${request.error?.message}`));
  });
}

/**
 * @param {CryptoKey} privateKey
 * @param {'dtls-fingerprint' | 'signal-hello' | 'browser-message'} domain
 * @param {string} text
 * @returns {Promise<string>} 128 hex characters.
 */
async function signText(privateKey, domain, text) {
  const signature = await crypto.subtle.sign({ name: 'Ed25519' }, privateKey, signedBytes(domain, text));
  return bytesToHex(new Uint8Array(signature));
}

/**
 * The bytes a Meshcore signature covers: `meshcore-sig-v1`, 0, the domain tag, 0, the text
 * (PROTOCOL.md, "Identities").
 * @param {'dtls-fingerprint' | 'signal-hello' | 'browser-message'} domain
 * @param {string} text
 * @returns {Uint8Array<ArrayBuffer>}
 */
function signedBytes(domain, text) {
  return utf8Encoder.encode(`meshcore-sig-v1\0${domain}\0${text}`);
}

/**
 * Whether `signature` binds the DTLS fingerprint of `sdp` to `signerId`.
 * @param {string} signerId
 * @param {unknown} sdp
 * @param {unknown} signature
 * @returns {Promise<boolean>}
 */
async function verifyBinding(signerId, sdp, signature) {
  if (typeof sdp !== 'string' || typeof signature !== 'string' || !SIGNATURE_PATTERN.test(signature)) {
    return false;
  }
  let text;
  try {
    text = bindingText(signerId, sdpFingerprint(sdp));
  } catch {
    return false;
  }
  const key = await crypto.subtle.importKey('raw', hexToBytes(signerId), { name: 'Ed25519' }, false, ['verify']);
  return crypto.subtle.verify({ name: 'Ed25519' }, key, hexToBytes(signature), signedBytes('dtls-fingerprint', text));
}

/**
 * The text whose signature binds a DTLS fingerprint to an id (PROTOCOL.md).
 * @param {string} signerId
 * @param {string} fingerprint Canonical `hash HEX:HEX:…`.
 * @returns {string}
 */
function bindingText(signerId, fingerprint) {
  return `meshcore-dtls/1\n${signerId}\n${fingerprint}`;
}

/**
 * The DTLS fingerprint of an SDP in canonical form: lowercase hash function, uppercase hex
 * pairs. Every `a=fingerprint:` line (session or media level) must agree.
 * @param {string} sdp
 * @returns {string}
 * @throws {Error} When the SDP has no fingerprint, a malformed one, or two that disagree.
 */
function sdpFingerprint(sdp) {
  let found = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (!line.startsWith('a=fingerprint:')) {
      continue;
    }
    const match = /^([A-Za-z0-9-]{1,16})\s+((?:[0-9A-Fa-f]{2}:){15,63}[0-9A-Fa-f]{2})\s*$/.exec(
      line.slice('a=fingerprint:'.length).trim(),
    );
    if (!match) {
      throw new Error(`a malformed SDP fingerprint line: ${line}`);
    }
    const canonical = `${match[1].toLowerCase()} ${match[2].toUpperCase()}`;
    if (found !== null && found !== canonical) {
      throw new Error('the SDP has fingerprint lines that disagree');
    }
    found = canonical;
  }
  if (found === null) {
    throw new Error('the SDP has no a=fingerprint line');
  }
  return found;
}

// Data-channel messages (PROTOCOL.md, "The data channel"); integers are big-endian.

/**
 * @typedef {{tag: 1 | 2, value: bigint}
 *   | {tag: 4 | 11, bytes: Uint8Array}
 *   | {tag: 5, seq: number, payload: Uint8Array}
 *   | {tag: 6, seq: number}
 *   | {tag: 16, seq: number, source: string, hops: number, payload: Uint8Array}
 *   | {tag: 8, request: number, status: 0 | 1, hops: number, rttMs: number, errorText: string}
 *   | {tag: 12 | 15, total: number, sha256: string}} DecodedFrame
 */

/**
 * Decodes one message a peer may send to a browser.
 * @param {Uint8Array} bytes
 * @returns {DecodedFrame}
 * @throws {ProtocolError} When the message is malformed or is one only a browser sends.
 */
function decodeFrame(bytes) {
  if (bytes.byteLength === 0) {
    throw new ProtocolError('an empty message');
  }
  if (bytes.byteLength > MAX_MESSAGE_BYTES) {
    throw new ProtocolError(`a message of ${bytes.byteLength} bytes, over the limit of ${MAX_MESSAGE_BYTES}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = bytes[0];
  const bodyLength = bytes.byteLength - 1;
  const expect = (valid, name) => {
    if (!valid) {
      throw new ProtocolError(`a ${name} message of ${bytes.byteLength} bytes`);
    }
  };
  switch (tag) {
    case Tag.PING:
    case Tag.PONG:
      expect(bodyLength === 8, tag === Tag.PING ? 'PING' : 'PONG');
      return { tag, value: view.getBigUint64(1) };
    case Tag.ECHO_REPLY:
    case Tag.SOURCE_DATA:
      expect(bodyLength <= MAX_BODY_BYTES, tag === Tag.ECHO_REPLY ? 'ECHO_REPLY' : 'SOURCE_DATA');
      return { tag, bytes: bytes.subarray(1) };
    case Tag.APP:
      expect(bodyLength >= 4 && bodyLength - 4 <= MAX_BODY_BYTES, 'APP');
      return { tag, seq: view.getUint32(1), payload: bytes.subarray(5) };
    case Tag.APP_ACK:
      expect(bodyLength === 4, 'APP_ACK');
      return { tag, seq: view.getUint32(1) };
    case Tag.MESH_MESSAGE:
      expect(
        bodyLength >= MESH_MESSAGE_FIXED_BYTES && bodyLength - MESH_MESSAGE_FIXED_BYTES <= MAX_BODY_BYTES,
        'MESH_MESSAGE',
      );
      return {
        tag,
        seq: view.getUint32(1),
        source: bytesToHex(bytes.subarray(5, 37)),
        hops: bytes[37],
        payload: bytes.subarray(38),
      };
    case Tag.MESH_RESULT: {
      expect(bodyLength >= 10, 'MESH_RESULT');
      const status = bytes[5];
      if (status !== 0 && status !== 1) {
        throw new ProtocolError(`a MESH_RESULT with the unknown status ${status}`);
      }
      return {
        tag,
        request: view.getUint32(1),
        status,
        hops: bytes[6],
        rttMs: view.getUint32(7),
        errorText: lenientUtf8Decoder.decode(bytes.subarray(11)),
      };
    }
    case Tag.SOURCE_END:
    case Tag.SINK_REPORT:
      expect(bodyLength === 40, tag === Tag.SOURCE_END ? 'SOURCE_END' : 'SINK_REPORT');
      return { tag, total: Number(view.getBigUint64(1)), sha256: bytesToHex(bytes.subarray(9)) };
    case Tag.ECHO:
    case Tag.MESH_SEND:
    case Tag.SOURCE:
    case Tag.SINK:
    case Tag.SINK_END:
      throw new ProtocolError(`a browser-to-node message (tag 0x${hexByte(tag)})`);
    default:
      throw new ProtocolError(`an unknown message tag 0x${hexByte(tag)}`);
  }
}

/**
 * @param {number} tag
 * @param {Uint8Array} body
 * @returns {Uint8Array<ArrayBuffer>}
 */
function taggedFrame(tag, body) {
  const frame = new Uint8Array(1 + body.byteLength);
  frame[0] = tag;
  frame.set(body, 1);
  return frame;
}

/**
 * @param {number} tag
 * @param {number} value
 * @returns {Uint8Array<ArrayBuffer>}
 */
function u32Frame(tag, value) {
  const frame = new Uint8Array(5);
  frame[0] = tag;
  new DataView(frame.buffer).setUint32(1, value);
  return frame;
}

/**
 * @param {number} tag
 * @param {number | bigint} value
 * @returns {Uint8Array<ArrayBuffer>}
 */
function u64Frame(tag, value) {
  const frame = new Uint8Array(9);
  frame[0] = tag;
  new DataView(frame.buffer).setBigUint64(1, BigInt(value));
  return frame;
}

/**
 * APP: u32 seq, payload.
 * @param {number} seq
 * @param {Uint8Array} payload
 * @returns {Uint8Array<ArrayBuffer>}
 */
function appFrame(seq, payload) {
  const frame = new Uint8Array(5 + payload.byteLength);
  frame[0] = Tag.APP;
  new DataView(frame.buffer).setUint32(1, seq);
  frame.set(payload, 5);
  return frame;
}

/**
 * MESH_SEND: u32 request, 32-byte destination id, 16-byte message id, u64 timestamp (Unix
 * ms), 64-byte signature, payload.
 * @param {number} request
 * @param {Uint8Array} destination
 * @param {{id: Uint8Array, timestamp: number, signature: Uint8Array}} signed
 * @param {Uint8Array} payload
 * @returns {Uint8Array<ArrayBuffer>}
 */
function meshSendFrame(request, destination, signed, payload) {
  const frame = new Uint8Array(1 + MESH_SEND_FIXED_BYTES + payload.byteLength);
  const view = new DataView(frame.buffer);
  frame[0] = Tag.MESH_SEND;
  view.setUint32(1, request);
  frame.set(destination, 5);
  frame.set(signed.id, 37);
  view.setBigUint64(53, BigInt(signed.timestamp));
  frame.set(signed.signature, 61);
  frame.set(payload, 1 + MESH_SEND_FIXED_BYTES);
  return frame;
}

/**
 * The APP payload of `data`: UTF-8 of its JSON text.
 * @param {unknown} data
 * @returns {Uint8Array<ArrayBuffer>}
 */
function encodeAppPayload(data) {
  const text = JSON.stringify(data);
  if (typeof text !== 'string') {
    throw new TypeError('the message must be JSON-serialisable (not undefined or a function)');
  }
  const payload = utf8Encoder.encode(text);
  checkBodySize('a message', payload.byteLength);
  return payload;
}

/**
 * What an APP payload hands to onMessage: the parsed JSON, or the text when not JSON.
 * @param {string} text
 * @returns {unknown}
 */
function parseAppText(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// Helpers.

/**
 * @param {string} what
 * @param {number} length
 */
function checkBodySize(what, length) {
  if (length > MAX_BODY_BYTES) {
    throw new RangeError(`${what} of ${length} bytes is over the limit of ${MAX_BODY_BYTES}`);
  }
}

/**
 * @param {number} totalBytes
 * @param {number} chunk
 */
function checkTransfer(totalBytes, chunk) {
  if (!Number.isSafeInteger(totalBytes) || totalBytes < 0) {
    throw new RangeError('totalBytes must be a non-negative integer');
  }
  if (!Number.isInteger(chunk) || chunk < 1 || chunk > MAX_BODY_BYTES) {
    throw new RangeError(`chunk must be an integer from 1 to ${MAX_BODY_BYTES}`);
  }
}

/**
 * `length` bytes of a fixed xorshift32 sequence: incompressible-looking, reproducible.
 * @param {number} length
 * @returns {Uint8Array<ArrayBuffer>}
 */
function patternBytes(length) {
  const words = new Uint32Array(Math.ceil(length / 4));
  let state = 0x9e3779b9;
  for (let i = 0; i < words.length; i += 1) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    words[i] = state;
  }
  return new Uint8Array(words.buffer, 0, length);
}

/**
 * @param {Uint8Array<ArrayBuffer>} bytes
 * @returns {Promise<string>}
 */
async function sha256Hex(bytes) {
  return bytesToHex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

/**
 * @param {Uint8Array} bytes
 * @returns {string}
 */
function bytesToHex(bytes) {
  let hex = '';
  for (const byte of bytes) {
    hex += hexByte(byte);
  }
  return hex;
}

/**
 * @param {number} byte
 * @returns {string}
 */
function hexByte(byte) {
  return byte.toString(16).padStart(2, '0');
}

/**
 * @param {string} hex Even-length lowercase hex (already validated).
 * @returns {Uint8Array<ArrayBuffer>}
 */
function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return bytes;
}

/**
 * A peer id shortened for messages.
 * @param {unknown} peerId
 * @returns {string}
 */
function describePeer(peerId) {
  return typeof peerId === 'string' && peerId.length > 12 ? `${peerId.slice(0, 12)}…` : String(peerId);
}

/**
 * @param {unknown} error
 * @returns {string}
 */
function errorMessage(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * @param {unknown} error
 * @returns {Error}
 */
function asError(error) {
  return error instanceof Error ? error : new Error(String(error));
}
