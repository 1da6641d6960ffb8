#!/usr/bin/env node
/**
 * Drives headless Chromium through the Meshcore browser client (`web/meshcore-p2p.js`) for
 * the node's WebRTC tests.
 *
 *     node web/tests/driver.mjs <scenario> --api http://127.0.0.1:PORT
 *         [--api2 http://127.0.0.1:PORT2] [--bytes N] [--to NODE_ID] [--runs N]
 *
 * Scenarios:
 *   node      open a data channel to the node; one echo; echoStream, upload and download of
 *             --bytes (default 10 000 000) with SHA-256 checks; one APP to the node.
 *   browsers  two browsers (separate profiles, so separate identities) on the node's
 *             signaling socket; A opens a channel to B, each sends the other one message.
 *   mesh      open a channel to the node, then send one message to --to across the mesh;
 *             with --api2 (the API of --to's node), read that node's inbox and have it
 *             send one message back to the browser's own id.
 *   mesh-browsers  browser A on --api's node, browser B on --api2's node (two nodes linked
 *             in a mesh): each sends the other one message carried by the nodes; then A
 *             opens a channel to B with signaling relayed across the mesh, and each sends
 *             the other one message over it.
 *   bench     --runs times (default 3): open, upload and download of --bytes (default
 *             32 MiB), and the same bytes between two RTCPeerConnections of one page (the
 *             baseline); medians and ratios to the baseline.
 *
 * The page is the node's `/demo?test=1` (which then starts nothing by itself); everything
 * runs through the client's public API and its `diagnostics`. Meant to run in a network
 * namespace with only loopback: Chromium's flags below keep it off the network, and
 * `--api` must be an IP address or localhost.
 *
 * Prints exactly one JSON line on stdout: the scenario's report with `"ok": true` (exit 0),
 * or `{"ok": false, "error": …}` (exit 1), in which case the error and the pages' console
 * are also written to stderr. Every wait has a time limit.
 */

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const CHROMIUM_PATH = '/usr/bin/chromium';

/** Chromium's switches, except `--disable-features` (see {@link disabledFeaturesSwitches}). */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1',
];

/** Host candidates as addresses, not mDNS names a node cannot resolve. */
const DISABLED_FEATURES = ['WebRtcHideLocalIpsWithMdns'];

/** Chromium ties network interface enumeration (browser-to-browser ICE) to these. */
const PERMISSIONS = ['microphone', 'camera'];

const LAUNCH_TIMEOUT_MS = 30_000;
const PAGE_LOAD_TIMEOUT_MS = 15_000;
const READY_TIMEOUT_MS = 15_000;
const OPEN_TIMEOUT_MS = 25_000;
const MESSAGE_TIMEOUT_MS = 30_000;
const MESH_TIMEOUT_MS = 70_000;
const CLOSE_TIMEOUT_MS = 10_000;

/** A transfer may take 30 s plus one second per MB (a floor of 1 MB/s). */
function transferTimeoutMs(bytes) {
  return 30_000 + bytes / 1_000;
}

const USAGE =
  'usage: node driver.mjs <node|browsers|mesh|mesh-browsers|bench> --api http://127.0.0.1:PORT ' +
  '[--api2 http://127.0.0.1:PORT2] [--bytes N] [--to NODE_ID] [--runs N]';

/** A scenario's expected failure: reported as `{"ok": false, "error": message}`. */
class ScenarioError extends Error {}

/** Console output of every page, for the failure report. */
const consoleLines = [];

/** One headless Chromium with its own fresh profile, showing the node's demo page. */
class ClientBrowser {
  /** @type {string} */
  label;
  /** @type {string | undefined} */
  profileDir;
  /** @type {import('playwright-core').BrowserContext | undefined} */
  context;
  /** @type {import('playwright-core').Page | undefined} */
  page;

  /** @param {string} label Prefix of this browser's console lines. */
  constructor(label) {
    this.label = label;
  }

  /**
   * Launches Chromium on a fresh profile, loads the demo page and imports the client.
   * @param {string} origin The node API's origin.
   * @param {{ignoreDefaultArgs: string[], args: string[]}} flags
   */
  async start(origin, flags) {
    this.profileDir = await mkdtemp(join(tmpdir(), 'meshcore-chromium-'));
    this.context = await chromium.launchPersistentContext(this.profileDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      ignoreDefaultArgs: flags.ignoreDefaultArgs,
      args: flags.args,
      permissions: PERMISSIONS,
      timeout: LAUNCH_TIMEOUT_MS,
    });
    this.page = this.context.pages()[0] ?? (await this.context.newPage());
    this.page.on('console', (message) =>
      consoleLines.push(`[${this.label}] ${message.type()}: ${message.text()}`),
    );
    this.page.on('pageerror', (error) =>
      consoleLines.push(`[${this.label}] page error: ${error.message}`),
    );
    await this.page.goto(`${origin}/demo?test=1`, { timeout: PAGE_LOAD_TIMEOUT_MS });
    await this.run('loading the client', PAGE_LOAD_TIMEOUT_MS, async () => {
      const { MeshcoreP2P } = await import('/meshcore-p2p.js');
      window.meshcoreTest = {
        client: null,
        inbox: [],
        create(identityName) {
          this.client = new MeshcoreP2P({
            identityName,
            onMessage: (peerId, data) => this.inbox.push({ peerId, data }),
            onError: (error) => console.error(`meshcore-p2p: ${error.message}`),
          });
          return this.client;
        },
      };
    });
  }

  /**
   * Runs `pageFunction(arg)` in the page, failing after `timeoutMs`.
   * @template T, A
   * @param {string} step What it does, for the error.
   * @param {number} timeoutMs
   * @param {(arg: A) => Promise<T> | T} pageFunction
   * @param {A} [arg]
   * @returns {Promise<T>}
   */
  async run(step, timeoutMs, pageFunction, arg) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new ScenarioError(`${this.label}: ${step} took more than ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.page.evaluate(pageFunction, arg), timeout]);
    } catch (error) {
      if (error instanceof ScenarioError) {
        throw error;
      }
      const pageMessage = firstLine(error).replace(/^page\.evaluate: (Error: )?/, '');
      throw new ScenarioError(`${this.label}: ${step}: ${pageMessage}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Creates the page's client and waits until it is ready.
   * @param {string} identityName
   * @returns {Promise<{peerId: string, nodeId: string}>}
   */
  startClient(identityName) {
    return this.run('starting the client', READY_TIMEOUT_MS, async (name) => {
      const client = window.meshcoreTest.create(name);
      await client.ready;
      return { peerId: client.peerId, nodeId: client.nodeId };
    }, identityName);
  }

  /**
   * Starts a client and opens its data channel to the node.
   * @param {string} identityName
   * @returns {Promise<number>} Milliseconds from `new MeshcoreP2P` to the open channel.
   */
  openToNode(identityName) {
    return this.run('opening the data channel to the node', READY_TIMEOUT_MS + OPEN_TIMEOUT_MS, async (name) => {
      const started = performance.now();
      const client = window.meshcoreTest.create(name);
      await client.ready;
      await client.connectToPeer(client.nodeId);
      return performance.now() - started;
    }, identityName);
  }

  /**
   * Waits until the page's client has received a message.
   * @returns {Promise<{peerId: string, data: unknown}>}
   */
  async nextMessage() {
    try {
      await this.page.waitForFunction(() => window.meshcoreTest.inbox.length > 0, null, {
        timeout: MESSAGE_TIMEOUT_MS,
      });
    } catch {
      throw new ScenarioError(`${this.label}: no message within ${MESSAGE_TIMEOUT_MS / 1000} s`);
    }
    return this.page.evaluate(() => window.meshcoreTest.inbox.shift());
  }

  /** Closes the client and the browser, and deletes the profile. */
  async close() {
    try {
      await withTimeout(
        (async () => {
          await this.page?.evaluate(() => window.meshcoreTest?.client?.close()).catch(() => {});
          await this.context?.close();
        })(),
        CLOSE_TIMEOUT_MS,
      );
    } finally {
      if (this.profileDir) {
        await rm(this.profileDir, { recursive: true, force: true });
      }
    }
  }
}

/**
 * Playwright passes its own `--disable-features`, and Chromium honours only the last of a
 * repeated switch, so ours are merged into Playwright's single one. Playwright's list is
 * not public: it is read off the command line of a short probe launch.
 * @returns {Promise<{ignoreDefaultArgs: string[], args: string[]}>}
 */
async function disabledFeaturesSwitches() {
  const probe = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: LAUNCH_TIMEOUT_MS,
  });
  let playwrightSwitch;
  try {
    const page = await probe.newPage();
    await page.goto('chrome://version', { timeout: PAGE_LOAD_TIMEOUT_MS });
    const commandLine = await page.textContent('#command_line', { timeout: PAGE_LOAD_TIMEOUT_MS });
    playwrightSwitch = /--disable-features=\S+/.exec(commandLine ?? '')?.[0];
  } finally {
    await withTimeout(probe.close(), CLOSE_TIMEOUT_MS);
  }
  if (!playwrightSwitch) {
    return { ignoreDefaultArgs: [], args: [...CHROMIUM_ARGS, `--disable-features=${DISABLED_FEATURES.join(',')}`] };
  }
  return {
    ignoreDefaultArgs: [playwrightSwitch],
    args: [...CHROMIUM_ARGS, `${playwrightSwitch},${DISABLED_FEATURES.join(',')}`],
  };
}

// Scenarios. Each gets launched browsers through `launch` and returns its report.

/**
 * @param {(label: string) => Promise<ClientBrowser>} launch
 * @param {{bytes: number}} options
 */
async function nodeScenario(launch, { bytes }) {
  const browser = await launch('browser');
  const openMs = await browser.openToNode('driver-node');
  const echoOk = await browser.run('a small echo', MESSAGE_TIMEOUT_MS, async () => {
    const probe = crypto.getRandomValues(new Uint8Array(1000));
    const reply = await window.meshcoreTest.client.diagnostics.echo(probe);
    return reply.length === probe.length && reply.every((byte, i) => byte === probe[i]);
  });
  if (!echoOk) {
    throw new ScenarioError('the small echo came back different');
  }
  const echoStream = await browser.run('echoStream', transferTimeoutMs(2 * bytes), (total) =>
    window.meshcoreTest.client.diagnostics.echoStream(total), bytes);
  const echo = {
    ...summarise(echoStream.bytes, echoStream.ms),
    sha_match: echoStream.sentSha256 === echoStream.receivedSha256,
  };
  requireMatch('echoStream', echo.sha_match, echoStream.sentSha256, echoStream.receivedSha256);
  const upload = await transfer(browser, 'upload', bytes);
  const download = await transfer(browser, 'download', bytes);
  const app = await browser.run('an APP to the node', MESSAGE_TIMEOUT_MS, () => {
    const { client } = window.meshcoreTest;
    return client.sendToPeer(client.nodeId, { hello: 'node' });
  });
  // What the node shows of this browser: its link and the message just sent.
  const nodeView = await browser.run("reading the node's connections and messages", MESSAGE_TIMEOUT_MS, async () => {
    const { client } = window.meshcoreTest;
    const read = async (path) => {
      const response = await fetch(`/v1${path}`);
      if (!response.ok) {
        throw new Error(`GET /v1${path}: HTTP ${response.status}`);
      }
      return response.json();
    };
    return { peer_id: client.peerId, connections: await read('/connections'), messages: await read('/messages') };
  });
  return { open_ms: round(openMs), echo_ok: echoOk, echo, upload, download, app, ...nodeView };
}

/**
 * @param {(label: string) => Promise<ClientBrowser>} launch
 */
async function browsersScenario(launch) {
  const [a, b] = await Promise.all([launch('A'), launch('B')]);
  const [idA, idB] = await Promise.all([a.startClient('driver-a'), b.startClient('driver-b')]);
  if (idA.peerId === idB.peerId) {
    throw new ScenarioError('the two browsers have the same identity');
  }
  const openMs = await a.run('connecting to B', MESSAGE_TIMEOUT_MS + OPEN_TIMEOUT_MS, async (peerId) => {
    const { client } = window.meshcoreTest;
    const deadline = performance.now() + 30_000;
    while (!client.availablePeers.includes(peerId)) {
      if (performance.now() > deadline) {
        throw new Error('B never appeared on the signaling socket');
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const started = performance.now();
    await client.connectToPeer(peerId);
    return performance.now() - started;
  }, idB.peerId);
  return {
    open_ms: round(openMs),
    a_id: idA.peerId,
    b_id: idB.peerId,
    ...(await exchangeMessages(a, idA.peerId, b, idB.peerId, 'hi from A')),
  };
}

/**
 * A sends `text` to B over their open channel and B replies `hi from B`; each checks what
 * it got.
 * @param {ClientBrowser} a
 * @param {string} idA
 * @param {ClientBrowser} b
 * @param {string} idB
 * @param {string} text
 */
async function exchangeMessages(a, idA, b, idB, text) {
  const aToB = await a.run('sending to B', MESSAGE_TIMEOUT_MS, ([peerId, message]) =>
    window.meshcoreTest.client.sendToPeer(peerId, { text: message }), [idB, text]);
  const bGot = await b.nextMessage();
  requireMessage('B', bGot, idA, text);
  const bToA = await b.run('replying to A', MESSAGE_TIMEOUT_MS, (peerId) =>
    window.meshcoreTest.client.sendToPeer(peerId, { text: 'hi from B' }), idA);
  const aGot = await a.nextMessage();
  requireMessage('A', aGot, idB, 'hi from B');
  return { a_got: aGot, b_got: bGot, a_to_b: aToB, b_to_a: bToA };
}

/**
 * @param {(label: string) => Promise<ClientBrowser>} launch
 * @param {{to: string}} options
 */
async function meshScenario(launch, { to, origin2 }) {
  const browser = await launch('browser');
  const openMs = await browser.openToNode('driver-mesh');
  const { peerId } = await browser.run('reading the client id', MESSAGE_TIMEOUT_MS, () => ({
    peerId: window.meshcoreTest.client.peerId,
  }));
  const result = await browser.run('sending across the mesh', MESH_TIMEOUT_MS, (destination) =>
    window.meshcoreTest.client.sendToPeer(destination, { text: 'over the mesh' }), to);
  if (!origin2) {
    return { open_ms: round(openMs), peer_id: peerId, to, result };
  }
  // The far node's view of the message, and a message from it to the browser's own id.
  const farInbox = await apiCall(origin2, 'GET', '/v1/messages');
  const farGot = farInbox.find((message) => message.source === peerId) ?? null;
  const farToBrowser = await untilDelivered('the far node sending to the browser', () =>
    apiCall(origin2, 'POST', '/v1/messages', {
      destination: peerId,
      payload: JSON.stringify({ text: 'hi from far' }),
    }));
  const browserGot = await browser.nextMessage();
  requireMessage('the browser', browserGot, to, 'hi from far');
  return {
    open_ms: round(openMs),
    peer_id: peerId,
    to,
    result,
    far_got: farGot,
    far_to_browser: farToBrowser,
    browser_got: browserGot,
  };
}

/**
 * Calls a node's API from this process; resolves with the JSON body of a 2xx answer and
 * rejects with the API's error otherwise.
 * @param {string} origin
 * @param {'GET' | 'POST'} method
 * @param {string} path
 * @param {unknown} [body]
 */
async function apiCall(origin, method, path, body) {
  const response = await fetch(`${origin}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(MESH_TIMEOUT_MS),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(`${method} ${path}: HTTP ${response.status} ${JSON.stringify(answer)}`);
  }
  return answer;
}

/**
 * Runs `send` until it resolves, trying again while the DHT has not yet named the
 * browser's node (its presence is announced when the browser registers), for at most
 * MESH_TIMEOUT_MS.
 * @template T
 * @param {string} step
 * @param {() => Promise<T>} send
 * @returns {Promise<T & {attempts: number}>}
 */
async function untilDelivered(step, send) {
  const deadline = Date.now() + MESH_TIMEOUT_MS;
  for (let attempts = 1; ; attempts += 1) {
    try {
      return { ...(await send()), attempts };
    } catch (error) {
      if (Date.now() > deadline) {
        throw new ScenarioError(`${step}: ${firstLine(error)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

/**
 * @param {(label: string, origin?: string) => Promise<ClientBrowser>} launch
 * @param {{origin2: string}} options
 */
async function meshBrowsersScenario(launch, { origin2 }) {
  const [a, b] = await Promise.all([launch('A'), launch('B', origin2)]);
  const [idA, idB] = await Promise.all([a.startClient('driver-a'), b.startClient('driver-b')]);
  if (idA.nodeId === idB.nodeId) {
    throw new ScenarioError('--api and --api2 are the same node');
  }
  // First without a channel between them: each node carries the other browser's message.
  await Promise.all([a, b].map((page) =>
    page.run('opening the data channel to its node', OPEN_TIMEOUT_MS, async () => {
      const { client } = window.meshcoreTest;
      await client.connectToPeer(client.nodeId);
    })));
  const carried = {};
  for (const [from, fromId, to, toId, text] of [
    [a, idA, b, idB, 'carried from A'],
    [b, idB, a, idA, 'carried from B'],
  ]) {
    const result = await from.run(`sending to ${to.label} through the nodes`, MESH_TIMEOUT_MS + OPEN_TIMEOUT_MS, async ([peerId, message]) => {
      const { client } = window.meshcoreTest;
      const deadline = performance.now() + 60_000;
      for (let attempts = 1; ; attempts += 1) {
        try {
          return { ...(await client.sendToPeer(peerId, { text: message })), attempts };
        } catch (error) {
          // Until the other node's announcement of the browser is in the DHT.
          if (performance.now() > deadline) {
            throw error;
          }
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      }
    }, [toId.peerId, text]);
    const got = await to.nextMessage();
    requireMessage(to.label, got, fromId.peerId, text);
    carried[`${from.label.toLowerCase()}_carried`] = result;
    carried[`${to.label.toLowerCase()}_got_carried`] = got;
  }
  // B's node announces B in the DHT when B registers; until that is done (and found), A's
  // node answers unknown_peer, and A tries again.
  const { openMs, attempts } = await a.run(
    'connecting to B on the other node',
    MESH_TIMEOUT_MS,
    async (peerId) => {
      const { client } = window.meshcoreTest;
      const deadline = performance.now() + 60_000;
      const started = performance.now();
      for (let attempts = 1; ; attempts += 1) {
        try {
          await client.connectToPeer(peerId);
          return { openMs: performance.now() - started, attempts };
        } catch (error) {
          if (!String(error.message).includes('unknown_peer') || performance.now() > deadline) {
            throw error;
          }
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      }
    },
    idB.peerId,
  );
  return {
    open_ms: round(openMs),
    attempts,
    a_id: idA.peerId,
    a_node: idA.nodeId,
    b_id: idB.peerId,
    b_node: idB.nodeId,
    ...carried,
    ...(await exchangeMessages(a, idA.peerId, b, idB.peerId, 'hi from A across the mesh')),
  };
}

/**
 * @param {(label: string) => Promise<ClientBrowser>} launch
 * @param {{bytes: number, runs: number}} options
 */
async function benchScenario(launch, { bytes, runs }) {
  const browser = await launch('browser');
  const openMs = [];
  const uploadRates = [];
  const downloadRates = [];
  const baselineRates = [];
  for (let run = 0; run < runs; run += 1) {
    openMs.push(await browser.openToNode(`driver-bench-${run}`));
    uploadRates.push((await transfer(browser, 'upload', bytes)).mb_per_s);
    downloadRates.push((await transfer(browser, 'download', bytes)).mb_per_s);
    await browser.run('closing the client', CLOSE_TIMEOUT_MS, () => window.meshcoreTest.client.close());
    baselineRates.push(
      round(await browser.run('the Chromium-to-Chromium baseline', transferTimeoutMs(bytes), chromiumToChromium, bytes)),
    );
  }
  const baseline = median(baselineRates);
  return {
    runs,
    bytes,
    open_ms: { median: round(median(openMs)), all: openMs.map(round) },
    upload_mb_per_s: { median: round(median(uploadRates)), all: uploadRates },
    download_mb_per_s: { median: round(median(downloadRates)), all: downloadRates },
    baseline_mb_per_s: { median: round(baseline), all: baselineRates },
    upload_vs_baseline: round(median(uploadRates) / baseline),
    download_vs_baseline: round(median(downloadRates) / baseline),
  };
}

/**
 * The baseline of the bench, run in the page: two `RTCPeerConnection`s of the same page
 * (Chromium's own SCTP at both ends, over loopback) move `total` bytes in 16 KiB messages
 * with the same back-pressure as the client (`bufferedAmount` under 8 MiB). Returns MB/s.
 * @param {number} total
 * @returns {Promise<number>}
 */
async function chromiumToChromium(total) {
  const sender = new RTCPeerConnection();
  const receiver = new RTCPeerConnection();
  sender.onicecandidate = (event) => event.candidate && receiver.addIceCandidate(event.candidate);
  receiver.onicecandidate = (event) => event.candidate && sender.addIceCandidate(event.candidate);
  const channel = sender.createDataChannel('baseline', { ordered: true });
  channel.binaryType = 'arraybuffer';
  const finished = new Promise((resolve) => {
    receiver.ondatachannel = (event) => {
      let received = 0;
      event.channel.binaryType = 'arraybuffer';
      event.channel.onmessage = (message) => {
        received += message.data.byteLength;
        if (received >= total) {
          resolve(performance.now());
        }
      };
    };
  });
  const opened = new Promise((resolve) => {
    channel.onopen = resolve;
  });
  await sender.setLocalDescription();
  await receiver.setRemoteDescription(sender.localDescription);
  await receiver.setLocalDescription();
  await sender.setRemoteDescription(receiver.localDescription);
  await opened;
  const chunk = new Uint8Array(16_384);
  channel.bufferedAmountLowThreshold = 1 << 20;
  const started = performance.now();
  for (let sent = 0; sent < total; ) {
    if (channel.bufferedAmount > 8 << 20) {
      await new Promise((resolve) => {
        channel.onbufferedamountlow = resolve;
      });
    }
    const length = Math.min(chunk.length, total - sent);
    channel.send(length === chunk.length ? chunk : chunk.subarray(0, length));
    sent += length;
  }
  const ended = await finished;
  sender.close();
  receiver.close();
  return total / 1e6 / ((ended - started) / 1000);
}

/**
 * Runs an upload or download of `bytes` and checks the node's hash.
 * @param {ClientBrowser} browser
 * @param {'upload' | 'download'} direction
 * @param {number} bytes
 */
async function transfer(browser, direction, bytes) {
  const result = await browser.run(direction, transferTimeoutMs(bytes), ([which, total]) =>
    window.meshcoreTest.client.diagnostics[which](total), [direction, bytes]);
  const shaMatch = result.sha256Local === result.sha256Node;
  requireMatch(direction, shaMatch, result.sha256Local, result.sha256Node);
  return { ...summarise(result.bytes, result.ms), sha_match: shaMatch };
}

// Checks and arithmetic.

function requireMatch(step, matches, local, remote) {
  if (!matches) {
    throw new ScenarioError(`${step}: SHA-256 mismatch (this side ${local}, the other ${remote})`);
  }
}

function requireMessage(who, got, fromId, text) {
  if (got?.peerId !== fromId || got?.data?.text !== text) {
    throw new ScenarioError(
      `${who} got ${JSON.stringify(got)}, expected {"text":"${text}"} from ${fromId}`,
    );
  }
}

function summarise(bytes, ms) {
  return { bytes, ms: round(ms), mb_per_s: round(bytes / 1e6 / (ms / 1000)) };
}

function median(values) {
  const sorted = [...values].sort((x, y) => x - y);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function round(value) {
  return Math.round(value * 10) / 10;
}

function firstLine(error) {
  return String(error instanceof Error ? error.message : error).split('\n')[0];
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @returns {Promise<T>}
 */
async function withTimeout(promise, ms) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new ScenarioError(`no answer within ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// Command line.

const SCENARIOS = {
  node: { run: nodeScenario, defaultBytes: 10_000_000 },
  browsers: { run: browsersScenario, defaultBytes: 0 },
  mesh: { run: meshScenario, defaultBytes: 0 },
  'mesh-browsers': { run: meshBrowsersScenario, defaultBytes: 0 },
  bench: { run: benchScenario, defaultBytes: 32 * 1024 * 1024 },
};

/** @returns {{scenario: string, origin: string, origin2: string | undefined, bytes: number, to: string | undefined, runs: number}} */
function parseCommandLine() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        api: { type: 'string' },
        api2: { type: 'string' },
        bytes: { type: 'string' },
        to: { type: 'string' },
        runs: { type: 'string' },
      },
    });
  } catch (error) {
    throw new ScenarioError(`${firstLine(error)}; ${USAGE}`);
  }
  const { positionals, values } = parsed;
  const [scenario] = positionals;
  if (positionals.length !== 1 || !Object.hasOwn(SCENARIOS, scenario)) {
    throw new ScenarioError(USAGE);
  }
  let origin;
  try {
    origin = new URL(values.api ?? '').origin;
  } catch {
    throw new ScenarioError(`--api must be a URL such as http://127.0.0.1:8420; ${USAGE}`);
  }
  const bytes = positiveInteger('--bytes', values.bytes, SCENARIOS[scenario].defaultBytes);
  const runs = positiveInteger('--runs', values.runs, 3);
  if (scenario === 'mesh' && !/^[0-9a-f]{64}$/.test(values.to ?? '')) {
    throw new ScenarioError('the mesh scenario needs --to NODE_ID (64 lowercase hex)');
  }
  let origin2;
  if (scenario === 'mesh' && values.api2 !== undefined) {
    try {
      origin2 = new URL(values.api2).origin;
    } catch {
      throw new ScenarioError('--api2 must be a URL such as http://127.0.0.1:8420 (the --to node)');
    }
  }
  if (scenario === 'mesh-browsers') {
    try {
      origin2 = new URL(values.api2 ?? '').origin;
    } catch {
      throw new ScenarioError('the mesh-browsers scenario needs --api2 http://127.0.0.1:PORT (the second node)');
    }
  }
  return { scenario, origin, origin2, bytes, to: values.to, runs };
}

function positiveInteger(name, text, fallback) {
  if (text === undefined) {
    return fallback;
  }
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new ScenarioError(`${name} must be a positive integer, not ${JSON.stringify(text)}`);
  }
  return value;
}

/** Upper bound on a whole run, a last resort behind the per-step limits. */
function overallTimeoutMs({ scenario, bytes, runs }) {
  const perRun = READY_TIMEOUT_MS + OPEN_TIMEOUT_MS + 4 * transferTimeoutMs(bytes) + MESH_TIMEOUT_MS;
  // The mesh scenarios wait for the DHT and the mesh up to twice more.
  const meshWaits = scenario.startsWith('mesh') ? 2 * MESH_TIMEOUT_MS : 0;
  return 2 * LAUNCH_TIMEOUT_MS + 2 * PAGE_LOAD_TIMEOUT_MS + meshWaits + (scenario === 'bench' ? runs : 1) * perRun;
}

async function main() {
  const options = parseCommandLine();
  const flags = await disabledFeaturesSwitches();
  const browsers = [];
  const launch = async (label, origin = options.origin) => {
    const browser = new ClientBrowser(label);
    browsers.push(browser);
    await browser.start(origin, flags);
    return browser;
  };
  try {
    return await withTimeout(SCENARIOS[options.scenario].run(launch, options), overallTimeoutMs(options));
  } finally {
    await Promise.allSettled(browsers.map((browser) => browser.close()));
  }
}

try {
  const report = await main();
  process.stdout.write(`${JSON.stringify({ ok: true, ...report })}\n`);
  process.exit(0);
} catch (error) {
  const message = firstLine(error);
  process.stdout.write(`${JSON.stringify({ ok: false, error: message })}\n`);
  process.stderr.write(`driver: ${message}\n`);
  if (!(error instanceof ScenarioError) && error instanceof Error && error.stack) {
    process.stderr.write(`${error.stack}\n`);
  }
  for (const line of consoleLines) {
    process.stderr.write(`${line}\n`);
  }
  process.exit(1);
}
