// Hark demo, written on the browser SDK (/sdk/hark.js) as its living example: publish the
// microphone, mirror the session's events, play the agent's voice. "Connected" is shown only at
// READY (the server decoded our audio), never on ICE; listening can be started only then.
import { HarkError, publish } from "/sdk/hark.js";

const $ = (id) => document.getElementById(id);
let session = null;
let player = null;
let levelTimer = null;
let playing = null; // the id of the agent playback the player hears now

function showError(error) {
  const text = !error ? "" : error instanceof HarkError ? `${error.code}: ${error.reason}` : error.message || String(error);
  $("error").textContent = text;
  $("error").hidden = !text;
}

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(item);
}

// Every control follows the session: one source of truth, so no two contradicting buttons.
function render() {
  const state = session ? session.state : null;
  const live = Boolean(session) && state !== "CLOSED";
  const ready = state === "READY";
  const listening = live && session.listening;
  $("state").textContent = state || "—";
  if (state) document.body.dataset.state = state;
  const badge = $("status");
  badge.className = "badge";
  if (!state) badge.textContent = "Not connected";
  else if (ready) badge.textContent = "Connected";
  else if (state === "CLOSED") badge.textContent = "Closed";
  else badge.textContent = "Connecting…";
  if (state) badge.classList.add(ready ? "ready" : state === "CLOSED" ? "closed" : "connecting");
  $("session-id").textContent = session ? session.id : "—";
  $("listening").textContent = listening ? "on" : "off";
  $("start").disabled = live;
  $("hangup").disabled = !live;
  $("listen").disabled = !ready || listening;
  $("unlisten").disabled = !ready || !listening;
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

async function start() {
  showError(null);
  $("start").disabled = true;
  const token = $("token").value.trim() || null;
  try {
    session = await publish("/whip", { token });
  } catch (error) {
    showError(error);
    $("start").disabled = false;
    return;
  }
  follow(session);
  render();
  session.play({ audioElement: $("agent-audio") }).then(
    (opened) => {
      if (session && session.state !== "CLOSED") {
        player = opened;
        levelTimer = setInterval(showAgentLevel, 100);
      } else {
        opened.stop();
      }
    },
    (error) => session && session.state !== "CLOSED" && showError(error),
  );
}

function follow(current) {
  current.addEventListener("event", ({ detail }) => describe(detail));
  current.addEventListener("state", () => {
    render();
    if (current.state === "CLOSED") teardown();
  });
  current.addEventListener("listening", render);
  current.addEventListener("speechstart", () => setSpeaking(true));
  current.addEventListener("speechend", () => setSpeaking(false));
  current.addEventListener("playbackstart", ({ detail }) => {
    playing = detail.playbackStarted.playbackId;
    setAgent("speaking", true);
    document.body.dataset.agentSpoke = "yes";
  });
  current.addEventListener("playbackend", ({ detail }) => {
    const cut = detail.playbackInterrupted;
    const id = (cut || detail.playbackFinished).playbackId;
    if (id !== playing) return;
    if (cut) {
      setAgent(`cut off (${cut.reason})`, false);
      document.body.dataset.agentCut = cut.reason;
    } else {
      setAgent("quiet", false);
    }
  });
  current.addEventListener("error", ({ detail }) => showError(detail));
}

// The session's log, one line per event, in revision order.
function describe(event) {
  const r = `r${event.revision || 0}`;
  if (event.snapshot) log(`${r} snapshot: ${event.snapshot.session.state}`);
  else if (event.stateChanged) {
    const change = event.stateChanged;
    log(change.state === "CLOSED" ? `${r} CLOSED (${change.closeReason}) ${change.closeDetail || ""}` : `${r} ${change.state}`);
  } else if (event.listeningChanged) log(`${r} listening ${event.listeningChanged.listening ? "on" : "off"}`);
  else if (event.speechStarted) log(`${r} speech started at ${event.speechStarted.startMs || 0} ms`);
  else if (event.speechEnded) {
    const ended = event.speechEnded;
    log(`${r} speech ended: ${ended.durationMs || 0} ms (${ended.reason})`);
  } else if (event.playbackStarted) log(`${r} agent playback ${event.playbackStarted.playbackId} started`);
  else if (event.playbackFinished) {
    const done = event.playbackFinished;
    log(`${r} agent playback ${done.playbackId} finished: ${done.playedMs || 0} ms`);
  } else if (event.playbackInterrupted) {
    const cut = event.playbackInterrupted;
    log(`${r} agent playback ${cut.playbackId} cut off after ${cut.playedMs || 0} ms (${cut.reason})`);
  }
}

// The level of what the player hears (0..1), from the browser's own receive statistics.
async function showAgentLevel() {
  const current = player;
  if (!current) return;
  const stats = await current.peerConnection.getStats();
  if (player !== current) return; // hung up meanwhile
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "audio") {
      const level = report.audioLevel || 0;
      $("agent-level").value = level;
      document.body.dataset.agentLevel = level.toFixed(3);
    }
  });
}

function teardown() {
  clearInterval(levelTimer);
  player = null;
  playing = null;
  setSpeaking(false);
  $("agent-level").value = 0;
  setAgent("quiet", false);
  for (const key of ["agentLevel", "agentCut", "agentSpoke"]) delete document.body.dataset[key];
  render();
}

async function setListening(on) {
  showError(null);
  try {
    if (on) await session.startListening({ waitForReady: true });
    else await session.stopListening();
  } catch (error) {
    showError(error);
  }
}

async function hangUp() {
  $("hangup").disabled = true;
  try {
    await session.hangUp();
  } catch (error) {
    showError(error);
  }
  render();
}

$("start").addEventListener("click", start);
$("hangup").addEventListener("click", hangUp);
$("listen").addEventListener("click", () => setListening(true));
$("unlisten").addEventListener("click", () => setListening(false));
render();
