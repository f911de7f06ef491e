// A job on the page: a card with overall progress, one slot per image, live from its events.

import { api, newKey } from "./api.js";
import { followJob } from "./live.js";

const DEMO_LABEL = "Demo output: faces from a DCGAN trained on DigiFace-1M.";
const FINAL = new Set(["completed", "partially_completed", "failed", "cancelled"]);
/** Kinds with one slot per image index (a portrait may build the reference set first); the
 * others are one image whatever its index. */
const MULTI = new Set(["pack", "story", "portrait"]);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function waitText(seconds) {
  const s = Math.max(0, Math.round(seconds || 0));
  if (s < 90) return `${s} s`;
  return `${Math.round(s / 60)} min`;
}

/** The likeness score (consistency with the character, 0..1) under an image, when there is one. */
export function showLikeness(container, score) {
  let line = container.querySelector(".likeness");
  if (score == null) {
    if (line) line.remove();
    return;
  }
  if (!line) {
    line = el("span", "likeness");
    container.append(line);
  }
  line.textContent = `likeness ${Number(score).toFixed(2)}`;
}

export class JobCard {
  /** `hooks`: openImage(imageId), finished(job), error(error). */
  constructor(jobId, { kind, count, title, hooks }) {
    this.jobId = jobId;
    this.kind = kind;
    this.hooks = hooks;
    this.listeners = [];
    this.slots = [];
    this.byImageId = new Map();
    this.follower = null;
    this.refreshing = null;
    this.refreshAgain = false;
    this.done = false;

    const card = el("article", "job");
    card.dataset.jobId = jobId;
    card.setAttribute("aria-label", title);
    const head = el("div", "job-head");
    const name = el("h3", "", title);
    this.status = el("span", "job-status", "queued");
    this.status.dataset.status = "queued";
    this.status.setAttribute("role", "status");
    this.cancelButton = el("button", "danger", "Cancel");
    this.cancelButton.type = "button";
    this.cancelButton.addEventListener("click", () => this.cancel());
    head.append(name, this.status, this.cancelButton);
    this.progress = el("progress");
    this.progress.max = 1;
    this.progress.value = 0;
    this.progress.setAttribute("aria-label", `${title}: overall progress`);
    this.grid = el("div", "grid");
    this.queue = el("p", "queue muted");
    this.queue.setAttribute("aria-live", "polite");
    this.note = el("p", "demo-note");
    card.append(head, this.progress, this.queue, this.grid, this.note);
    this.element = card;
    this.ensureSlots(count);
  }

  /** The gateway's estimate when it accepted the job (ISO time), until the queue says more. */
  estimate(when) {
    if (!when) return;
    const at = new Date(when);
    if (!Number.isNaN(at.getTime())) this.queue.textContent = `expected by ${at.toLocaleTimeString()}`;
  }

  /** The job's place in its tier's queue (`queue` of the job record or a queue_status message). */
  showQueue(queue) {
    if (queue === undefined) return;
    if (!queue || this.done) {
      this.queue.textContent = "";
      return;
    }
    const where = queue.position <= 1 ? `next in the ${queue.tier} queue` : `#${queue.position} in the ${queue.tier} queue`;
    const ahead = queue.imagesAhead ? `, ${queue.imagesAhead} image${queue.imagesAhead === 1 ? "" : "s"} ahead` : "";
    this.queue.textContent = `${where}${ahead}; about ${waitText(queue.estimatedWaitSeconds)} to wait`;
  }

  /** Called with (type, envelope) for every event, after the card has drawn it. */
  onEvent(listener) {
    this.listeners.push(listener);
  }

  ensureSlots(count) {
    while (this.slots.length < count) {
      const index = this.slots.length;
      const slot = el("div", "slot");
      slot.dataset.index = String(index);
      const pic = el("div", "pic", `#${index + 1}`);
      const state = el("div", "state", "waiting");
      const bar = el("progress");
      bar.max = 1;
      bar.value = 0;
      bar.setAttribute("aria-label", `Image ${index + 1} progress`);
      slot.append(pic, state, bar);
      this.grid.append(slot);
      this.slots.push({ slot, pic, state, bar, fraction: 0, imageId: null, shown: null });
    }
  }

  slot(data) {
    if (!data || typeof data.image_index !== "number") return null;
    // A scene or a regeneration is one image, whatever its index in the job it came from.
    const index = MULTI.has(this.kind) ? data.image_index : 0;
    this.ensureSlots(index + 1);
    const slot = this.slots[index];
    if (data.image_id) {
      slot.imageId = data.image_id;
      this.byImageId.set(data.image_id, slot);
    }
    return slot;
  }

  set(slot, text, fraction) {
    if (!slot) return;
    slot.state.textContent = text;
    if (fraction !== undefined) {
      slot.fraction = Math.max(slot.fraction, fraction);
      slot.bar.value = slot.fraction;
    }
    const total = this.slots.reduce((sum, s) => sum + s.fraction, 0);
    this.progress.value = this.slots.length ? total / this.slots.length : 0;
  }

  setStatus(status, text) {
    this.status.dataset.status = status;
    this.status.textContent = text || status.replace(/_/g, " ");
    if (FINAL.has(status)) this.cancelButton.hidden = true;
  }

  handle(type, envelope) {
    const d = envelope.data || {};
    const slot = this.slot(d);
    switch (type) {
      case "generation_queued":
        if (d.image_count && MULTI.has(this.kind)) this.ensureSlots(d.image_count);
        this.set(slot, d.attempt > 1 ? `queued (attempt ${d.attempt})` : "queued", 0.02);
        break;
      case "generation_started":
        if (!this.done) this.setStatus("running");
        this.set(slot, "generating", 0.05);
        break;
      case "generation_progress":
        this.set(slot, `step ${d.step} of ${d.total_steps}`, 0.05 + (0.85 * d.step) / d.total_steps);
        break;
      case "generation_completed":
        this.set(slot, "finishing", 0.92);
        break;
      case "consistency_flagged":
        this.set(slot, d.final ? "kept the closest likeness" : "retrying for a closer likeness");
        break;
      case "generation_failed":
        if (d.final || d.error_type === "Cancelled") {
          slot?.slot.classList.add("failed");
          this.set(slot, d.error_type === "Cancelled" ? "cancelled" : `failed: ${d.error}`, 1);
        } else {
          this.set(slot, `retrying: ${d.error}`);
        }
        break;
      case "image_stored":
        slot?.slot.classList.add("stored");
        this.set(slot, `done · v${d.version}`, 1);
        this.refreshImages();
        break;
      case "job_progress":
        if (!this.done && d.total) {
          this.setStatus("running", `running: ${d.completed} of ${d.total} done`);
        }
        break;
      case "job_cancelled":
        // The cancel took: nothing new starts, the images already running finish and are
        // counted; the job's pack_completed (its last word) says "cancelled" with the counts.
        if (!this.done) {
          this.setStatus("cancelling", "cancelling…");
          this.cancelButton.hidden = true;
        }
        break;
      case "pack_completed":
        this.finish(d);
        break;
      case "queue_status":
        this.showQueue(envelope.queue);
        break;
      default:
        break;
    }
    for (const listener of this.listeners) listener(type, envelope);
  }

  finish(data) {
    this.done = true;
    this.queue.textContent = "";
    const parts = [`${data.completed_count} of ${data.image_count} images`];
    if (data.failed_count) parts.push(`${data.failed_count} failed`);
    if (data.reason) parts.push(data.reason);
    this.setStatus(data.status, `${data.status.replace(/_/g, " ")} (${parts.join(", ")})`);
    this.settleSlots(data.status);
  }

  /** Draw a job that ended before the page loaded, from its record (no stream to follow). */
  showEnded(job) {
    this.done = true;
    this.queue.textContent = "";
    this.ensureSlots(job.total || 0);
    const parts = [`${job.completed} of ${job.total} images`];
    if (job.failed) parts.push(`${job.failed} failed`);
    this.setStatus(job.status, `${job.status.replace(/_/g, " ")} (${parts.join(", ")})`);
    this.showImages(job.images || []);
    this.settleSlots(job.status);
  }

  /** The job is over: a slot still waiting or "finishing" will get no image; say so. */
  settleSlots(status) {
    const text = status === "cancelled" ? "cancelled" : "not made";
    for (const slot of this.slots) {
      const classes = slot.slot.classList;
      if (classes.contains("stored") || classes.contains("failed")) continue;
      classes.add("failed");
      this.set(slot, text, 1);
    }
  }

  follow() {
    this.follower = followJob(this.jobId, {
      onEvent: (type, envelope) => this.handle(type, envelope),
      onEnd: (job) => {
        if (job) {
          if (!this.done) {
            this.done = true;
            this.setStatus(job.status, `${job.status.replace(/_/g, " ")} (${job.completed} of ${job.total} images)`);
          }
          this.showImages(job.images || []);
          this.settleSlots(job.status);
        }
        for (const listener of this.listeners) listener("end", job);
        this.hooks.finished(job);
      },
      onTrouble: (error) => this.hooks.error(error),
    });
  }

  close() {
    if (this.follower) this.follower.close();
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      const result = await api("POST", `api/v1/jobs/${encodeURIComponent(this.jobId)}/cancel`, undefined, {
        key: newKey(),
      });
      if (!this.done) this.setStatus(result.status, "cancelling…");
    } catch (error) {
      this.hooks.error(error);
      this.cancelButton.disabled = false;
    }
  }

  /** Fetch the job's images (signed thumbnail URLs); calls made meanwhile are folded into one. */
  refreshImages() {
    if (this.refreshing) {
      this.refreshAgain = true;
      return;
    }
    this.refreshing = api("GET", `api/v1/jobs/${encodeURIComponent(this.jobId)}`)
      .then((job) => {
        this.showQueue(job.queue);
        this.showImages(job.images || []);
      })
      .catch((error) => this.hooks.error(error))
      .finally(() => {
        this.refreshing = null;
        if (this.refreshAgain) {
          this.refreshAgain = false;
          this.refreshImages();
        }
      });
  }

  showImages(images) {
    for (const image of images) {
      if (!image.thumbnailUrl && !image.url) continue;
      let slot = this.byImageId.get(image.id);
      if (!slot) slot = this.slots.find((s) => !s.imageId);
      if (!slot) continue;
      slot.imageId = image.id;
      this.byImageId.set(image.id, slot);
      const key = `${image.id}:${image.version}:${image.consistencyScore}`;
      if (slot.shown === key) continue;
      slot.shown = key;
      const index = this.slots.indexOf(slot);
      showLikeness(slot.slot, image.consistencyScore);
      const button = el("button", "pic");
      button.type = "button";
      button.setAttribute("aria-label", `Open image ${index + 1}`);
      const img = el("img");
      img.src = image.thumbnailUrl || image.url;
      img.alt = `Image ${index + 1}, version ${image.version}`;
      button.append(img);
      button.addEventListener("click", () => this.hooks.openImage(image.id));
      slot.pic.replaceWith(button);
      slot.pic = button;
      if (image.status === "completed" && !slot.slot.classList.contains("stored")) {
        slot.slot.classList.remove("failed");
        slot.slot.classList.add("stored");
        this.set(slot, `done · v${image.version}`, 1);
      }
      if (image.demo) this.note.textContent = DEMO_LABEL;
    }
  }
}
