// A small consumer of hark.d.ts: `tsc --noEmit -p tests/sdk` checks the declarations are usable
// as documented; tests/sdk/exports.test.mjs checks they name exactly what hark.js exports.
import {
  HarkError,
  type HarkEvent,
  HarkPlayer,
  HarkSession,
  publish,
  type SessionState,
  VERSION,
} from "../../media/static/sdk/hark.js";

export async function talk(token: string): Promise<string> {
  const session: HarkSession = await publish("https://hark.example/whip", {
    token,
    audio: { echoCancellation: false },
    iceServers: [{ urls: "stun:stun.example.net" }],
    redirectOrigins: ["https://node2.hark.example"],
    connectionLostAfterMs: 30_000,
  });
  session.addEventListener("speechstart", (event) => {
    const started: HarkEvent = event.detail;
    console.log(started.speechStarted?.startMs, session.listening);
  });
  session.addEventListener("state", () => {
    const state: SessionState = session.state;
    if (state === "CLOSED" && session.closeReason === "CONNECTION_LOST") console.log("no events");
    else if (state === "CLOSED") console.log(session.closeReason, session.closeDetail);
  });
  session.addEventListener("event", (event) => console.log(Number(event.detail.revision ?? 0)));
  try {
    await session.ready({ timeoutMs: 10_000 });
  } catch (error) {
    if (error instanceof HarkError) return `${error.code}: ${error.reason}`;
    throw error;
  }
  await session.startListening({ waitForReady: true });
  const player: HarkPlayer = await session.play({ audioElement: new Audio() });
  await player.stop();
  await session.stopListening();
  await session.hangUp();
  return `${VERSION} ${session.id} ${session.url}`;
}
