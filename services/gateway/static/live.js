// Live job events over Server-Sent Events, resumed after any interruption.
//
// EventSource cannot send an Authorization header, so each connection carries a
// short-lived stream token in the query. A dropped connection is retried by the browser
// itself with the Last-Event-ID header; once the token has expired that retry is refused
// and the source closes, so we reopen it here with a fresh token, passing the last id we
// saw as `lastEventId`. Either way the server resumes right after that event.

import { api } from "./api.js";

export const EVENT_TYPES = [
  "generation_queued", "generation_started", "generation_progress", "generation_completed",
  "generation_failed", "consistency_flagged", "image_stored", "job_progress", "job_cancelled",
  "pack_completed", "budget_alert", "image_reviewed", "image_deleted",
  // No id (resuming is unaffected): the job's place in its tier's queue, null once none waits.
  "queue_status",
];
const TERMINAL = new Set(["completed", "partially_completed", "failed", "cancelled"]);

/**
 * Follow one job until its closing `pack_completed` (or the job is found finished).
 * `onEvent(type, envelope)` gets every event once, in order; `onEnd(job)` runs once at the end.
 * Returns `{ close() }`.
 */
export function followJob(jobId, { onEvent, onEnd, onTrouble }) {
  let source = null;
  let lastId = null;
  let closed = false;
  let failures = 0;

  const finish = async () => {
    if (closed) return;
    closed = true;
    if (source) source.close();
    let job = null;
    try {
      job = await api("GET", `api/v1/jobs/${encodeURIComponent(jobId)}`);
    } catch (error) {
      if (onTrouble) onTrouble(error);
    }
    if (onEnd) onEnd(job);
  };

  const open = async () => {
    if (closed) return;
    let token;
    try {
      ({ token } = await api("POST", "api/v1/stream-tokens"));
    } catch (error) {
      if (onTrouble) onTrouble(error);
      retryLater();
      return;
    }
    if (closed) return;
    const url = new URL(`api/v1/jobs/${encodeURIComponent(jobId)}/events`, document.baseURI);
    url.searchParams.set("stream_token", token);
    if (lastId) url.searchParams.set("lastEventId", lastId);
    source = new EventSource(url);
    source.onopen = () => { failures = 0; };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        lastId = message.lastEventId || lastId;
        let envelope;
        try {
          envelope = JSON.parse(message.data);
        } catch {
          return;
        }
        onEvent(type, envelope);
        if (type === "pack_completed") finish();
      });
    }
    source.onerror = () => {
      if (closed) return;
      // The server ends a finished job's stream; the browser would reconnect forever.
      checkFinished();
      if (source.readyState === EventSource.CLOSED) retryLater();
    };
  };

  const checkFinished = async () => {
    try {
      const job = await api("GET", `api/v1/jobs/${encodeURIComponent(jobId)}`);
      if (TERMINAL.has(job.status)) finish();
    } catch (error) {
      if (error.status === 404) finish();
    }
  };

  const retryLater = () => {
    failures += 1;
    const delay = Math.min(1000 * 2 ** Math.min(failures - 1, 4), 15000);
    setTimeout(open, delay);
  };

  open();
  return {
    close() {
      closed = true;
      if (source) source.close();
    },
  };
}
