"use strict";
// Hark demo: publish the microphone over WHIP, mirror the session's events over SSE, and play the
// agent's voice through a WHEP player on the same session id.
// "Connected" is shown only once the server reports READY (first audio decoded), never on ICE.

const $ = (id) => document.getElementById(id);
let pc = null;
let stream = null;
let events = null;
let sessionUrl = null;
let sessionId = null;
let player = null;
let playerUrl = null;
let levelTimer = null;
let playing = null; // the id of the agent playback the player hears now

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(item);
}

function setState(state) {
  $("state").textContent = state;
  document.body.dataset.state = state;
  const badge = $("status");
  badge.className = "badge";
  if (state === "READY") {
    badge.textContent = "Connected";
    badge.classList.add("ready");
  } else if (state === "CLOSED") {
    badge.textContent = "Closed";
    badge.classList.add("closed");
  } else {
    badge.textContent = "Connecting…";
    badge.classList.add("connecting");
  }
  const ready = state === "READY";
  $("listen").disabled = !ready;
  $("unlisten").disabled = !ready;
}

function setListening(on) {
  $("listening").textContent = on ? "on" : "off";
}

function setSpeaking(on) {
  const badge = $("speaking");
  badge.textContent = on ? "speaking" : "silent";
  badge.classList.toggle("on", on);
  if (on) document.body.dataset.spoke = "yes";
}

function setAgent(text, speaking) {
  const badge = $("agent");
  badge.textContent = text;
  badge.classList.toggle("on", speaking);
}

function gatheringComplete(peer, timeoutMs) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (peer.iceGatheringState === "complete") resolve();
    };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function start() {
  showError("");
  $("start").disabled = true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc = new RTCPeerConnection();
    for (const track of stream.getAudioTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc, 2000);
    const response = await fetch("/whip", {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders() },
      body: pc.localDescription.sdp,
    });
    const body = await response.text();
    if (response.status !== 201) {
      throw new Error(`The server refused the session (${response.status}): ${body.trim()}`);
    }
    sessionUrl = new URL(response.headers.get("Location"), window.location.href).href;
    sessionId = sessionUrl.split("/").pop();
    $("session-id").textContent = sessionId;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    setState("CONNECTING");
    watch();
    $("hangup").disabled = false;
    openPlayer(sessionId).catch((error) => {
      if (player) showError(error.message || String(error)); // not after a hang-up
    });
  } catch (error) {
    showError(error.message || String(error));
    teardown();
    $("start").disabled = false;
  }
}

// The WHIP answer is recvonly (RFC 9725): the agent's voice comes back on a WHEP player.
// A hang-up (teardown) may come at any await: after each one, stop if this peer is no longer ours.
async function openPlayer(session) {
  const peer = new RTCPeerConnection();
  player = peer;
  const current = () => player === peer;
  peer.addTransceiver("audio", { direction: "recvonly" });
  peer.ontrack = (event) => {
    $("agent-audio").srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  await peer.setLocalDescription(await peer.createOffer());
  await gatheringComplete(peer, 2000);
  if (!current()) return;
  const response = await fetch(`/whep/${session}`, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", ...authHeaders() },
    body: peer.localDescription.sdp,
  });
  const body = await response.text();
  if (response.status !== 201) {
    if (!current()) return;
    throw new Error(`The server refused the agent's audio (${response.status}): ${body.trim()}`);
  }
  const url = new URL(response.headers.get("Location"), window.location.href).href;
  if (!current()) {
    fetch(url, { method: "DELETE", headers: authHeaders() });
    return;
  }
  playerUrl = url;
  await peer.setRemoteDescription({ type: "answer", sdp: body });
  if (current()) levelTimer = setInterval(showAgentLevel, 100);
}

// The level of what the player hears (0..1), from the browser's own receive statistics.
async function showAgentLevel() {
  const peer = player;
  if (!peer) return;
  const stats = await peer.getStats();
  if (player !== peer) return; // hung up meanwhile
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "audio") {
      const level = report.audioLevel || 0;
      $("agent-level").value = level;
      document.body.dataset.agentLevel = level.toFixed(3);
    }
  });
}

function watch() {
  const token = $("token").value.trim();
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  events = new EventSource(`/whip/${sessionId}/events${query}`);
  events.onmessage = (message) => handle(JSON.parse(message.data));
  events.onerror = () => {
    if (document.body.dataset.state === "CLOSED") events.close();
  };
}

function handle(event) {
  const revision = event.revision || "0";
  if (event.snapshot) {
    const session = event.snapshot.session;
    setState(session.state);
    setListening(Boolean(session.listening));
    log(`r${revision} snapshot: ${session.state}`);
  } else if (event.stateChanged) {
    const change = event.stateChanged;
    setState(change.state);
    if (change.state === "CLOSED") {
      log(`r${revision} CLOSED (${change.closeReason}) ${change.closeDetail || ""}`);
      events.close();
      teardown();
    } else {
      log(`r${revision} ${change.state}`);
    }
  } else if (event.listeningChanged) {
    setListening(Boolean(event.listeningChanged.listening));
    log(`r${revision} listening ${event.listeningChanged.listening ? "on" : "off"}`);
  } else if (event.speechStarted) {
    setSpeaking(true);
    log(`r${revision} speech started at ${event.speechStarted.startMs || 0} ms`);
  } else if (event.speechEnded) {
    setSpeaking(false);
    const ended = event.speechEnded;
    log(`r${revision} speech ended: ${ended.durationMs || 0} ms (${ended.reason})`);
  } else if (event.playbackStarted) {
    playing = event.playbackStarted.playbackId;
    setAgent("speaking", true);
    document.body.dataset.agentSpoke = "yes";
    log(`r${revision} agent playback ${playing} started`);
  } else if (event.playbackFinished) {
    const done = event.playbackFinished;
    if (done.playbackId === playing) setAgent("quiet", false);
    log(`r${revision} agent playback ${done.playbackId} finished: ${done.playedMs || 0} ms`);
  } else if (event.playbackInterrupted) {
    const cut = event.playbackInterrupted;
    if (cut.playbackId === playing) {
      setAgent(`cut off (${cut.reason})`, false);
      document.body.dataset.agentCut = cut.reason;
    }
    log(`r${revision} agent playback ${cut.playbackId} cut off after ${cut.playedMs || 0} ms (${cut.reason})`);
  }
}

async function setListeningOnServer(listening) {
  showError("");
  const response = await fetch(`/whip/${sessionId}/listening`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ listening, wait_for_ready: true }),
  });
  if (!response.ok) showError(`${response.status}: ${(await response.text()).trim()}`);
}

function teardown() {
  if (pc) pc.close();
  if (player) player.close();
  if (stream) stream.getTracks().forEach((track) => track.stop());
  clearInterval(levelTimer);
  pc = null;
  player = null;
  playerUrl = null;
  playing = null;
  stream = null;
  $("agent-level").value = 0;
  setAgent("quiet", false);
  for (const key of ["agentLevel", "agentCut", "agentSpoke"]) delete document.body.dataset[key];
  $("hangup").disabled = true;
  $("listen").disabled = true;
  $("unlisten").disabled = true;
}

async function hangUp() {
  if (playerUrl) {
    await fetch(playerUrl, { method: "DELETE", headers: authHeaders() });
  }
  if (sessionUrl) {
    await fetch(sessionUrl, { method: "DELETE", headers: authHeaders() });
    sessionUrl = null;
  }
  teardown();
  $("start").disabled = false;
}

$("start").addEventListener("click", start);
$("hangup").addEventListener("click", hangUp);
$("listen").addEventListener("click", () => setListeningOnServer(true));
$("unlisten").addEventListener("click", () => setListeningOnServer(false));
window.addEventListener("pagehide", () => {
  if (sessionUrl) {
    fetch(sessionUrl, { method: "DELETE", headers: authHeaders(), keepalive: true });
  }
});
