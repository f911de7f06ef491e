// The imagegen web page: sign in, characters, packs and scenes with live progress, images.

import {
  api, ApiError, claims, describe, getToken, newKey, onReachability, probeGateway, setToken, STYLES,
} from "./api.js";
import { JobCard, showLikeness } from "./jobs.js";
import { fillCast, installStoryEditor, loadStories } from "./story.js";
import { ImageDialog } from "./image.js";

const $ = (id) => document.getElementById(id);

const state = { characters: [], jobs: new Map() };

// --- messages -------------------------------------------------------------------------

export function showError(error) {
  const message = error instanceof Error ? error.message : error || "";
  const banner = $("error");
  banner.textContent = message;
  // "Cannot reach the gateway" lasts only until the gateway answers again.
  const unreachable = error instanceof ApiError && error.status === 0;
  banner.dataset.unreachable = unreachable ? "true" : "";
  if (unreachable) probeGateway();
  if (error instanceof ApiError && error.status === 401) showSignIn(true);
}

onReachability((up) => {
  if (up && $("error").dataset.unreachable === "true") showError();
});

export function notice(text) {
  $("notice").textContent = text || "";
}

function clearFieldErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    el.removeAttribute("aria-describedby");
  }
  for (const el of form.querySelectorAll(".field-error")) el.remove();
}

/** Mark the inputs the API named (`attributes.hairColour`, `image_count`, …). */
export function markFields(form, error) {
  clearFieldErrors(form);
  if (!(error instanceof ApiError)) return;
  for (const [path, message] of Object.entries(error.fields)) {
    const input = form.elements.namedItem(path) || form.elements.namedItem(path.split(".")[0]);
    if (!(input instanceof HTMLElement) || !input.closest("label")) continue;
    const note = document.createElement("span");
    note.className = "field-error";
    note.id = `${form.id}-${path.replace(/\W/g, "-")}-error`;
    note.textContent = message;
    input.closest("label").append(note);
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", note.id);
  }
}

/** Run a form action with its submit button disabled and errors shown. */
async function submitting(form, action) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  showError();
  clearFieldErrors(form);
  try {
    await action();
  } catch (error) {
    showError(error);
    markFields(form, error);
  } finally {
    button.disabled = false;
  }
}

// --- sign in --------------------------------------------------------------------------

function showSignIn(expired) {
  $("signin").hidden = false;
  if (expired) $("token").focus();
}

async function signIn(token) {
  setToken(token);
  try {
    await loadCharacters();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) setToken("");
    throw error;
  }
  // Only once the gateway has accepted the token.
  const who = claims(token);
  $("who").textContent = who ? `Signed in as ${who.sub} (${who.tier || "?"} tier)` : "";
  $("signout").hidden = false;
  $("app").hidden = false;
  $("signin").hidden = true;
  await Promise.all([resumeJobs(), loadStories()]);
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  showError();
  signIn(token).catch(showError);
});

$("signout").addEventListener("click", () => {
  setToken("");
  for (const job of state.jobs.values()) job.close();
  location.replace(location.pathname);
});

// --- characters -----------------------------------------------------------------------

function selectedCharacter() {
  return state.characters.find((c) => c.id === $("character").value) || null;
}

function describeCharacter(character) {
  if (!character) return "";
  const a = character.attributes || {};
  const look = [a.ageRange, a.gender, a.hairColour && `${a.hairColour} hair`, a.outfit]
    .filter(Boolean)
    .join(", ");
  const set = character.referenceSet;
  const built = set && set.status !== "none"
    ? `, reference set ${set.status}${set.imageCount ? ` (${set.imageCount} images)` : ""}`
    : "";
  const photos = (character.referencePhotos || []).length;
  const refs = photos ? `, ${photos} reference photo${photos === 1 ? "" : "s"}` : "";
  return `${character.artStyle}, locked seed ${character.seed}${built}${refs}${look ? ` — ${look}` : ""}`;
}

async function loadCharacters(selectId) {
  const { items } = await api("GET", "api/v1/characters?limit=100");
  state.characters = items;
  const select = $("character");
  const keep = selectId || select.value;
  select.replaceChildren(
    ...items.map((c) => {
      const option = new Option(c.name, c.id);
      option.selected = c.id === keep;
      return option;
    }),
  );
  $("new-character").open = items.length === 0;
  fillCast(items, select.value);
  onCharacterChange();
}

function onCharacterChange() {
  $("character-info").textContent = describeCharacter(selectedCharacter());
  loadGallery().catch(showError);
}

$("character").addEventListener("change", onCharacterChange);

function listOf(value) {
  return String(value || "")
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

function characterBody(form) {
  const body = { attributes: {} };
  for (const el of form.elements) {
    if (!el.name || el.value === "") continue;
    const value = el.hasAttribute("data-list") ? listOf(el.value) : el.value.trim();
    if (Array.isArray(value) && value.length === 0) continue;
    if (el.name === "seed") body.seed = Number(el.value);
    else if (el.name.startsWith("attributes.")) body.attributes[el.name.slice(11)] = value;
    else body[el.name] = value;
  }
  return body;
}

$("character-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const character = await api("POST", "api/v1/characters", characterBody(form), { key: newKey() });
    notice(`Created ${character.name} with locked seed ${character.seed}.`);
    await loadCharacters(character.id);
    $("new-character").open = false;
  });
});

// --- generation -----------------------------------------------------------------------

function requireCharacter() {
  const character = selectedCharacter();
  if (!character) throw new Error("Create or pick a character first.");
  return character;
}

function track(card, { follow = true } = {}) {
  state.jobs.set(card.jobId, card);
  $("no-jobs").hidden = true;
  $("jobs").prepend(card.element);
  if (follow) card.follow();
  return card;
}

$("pack-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const character = requireCharacter();
    const f = form.elements;
    const body = { character_id: character.id };
    // A photo pack's size comes from its group unless the count is given.
    if (!f.photo_group.value || f.image_count.value !== "") body.image_count = Number(f.image_count.value);
    for (const name of ["style", "size", "quality", "model", "photo_group"]) {
      const value = f[name].value.trim();
      if (value) body[name] = value;
    }
    const job = await api("POST", "api/generate", body, { key: newKey() });
    const count = job.image_count || body.image_count || 1;
    const what = body.photo_group ? `Photo pack (${body.photo_group})` : "Pack";
    track(new JobCard(job.job_id, { kind: "pack", count, title: `${what} of ${count}: ${character.name}`, hooks }));
  });
});

$("scene-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const character = requireCharacter();
    const f = form.elements;
    const description = f.sceneDescription.value.trim();
    // A scene illustrates a story page: make a one-page story for it.
    const story = await api(
      "POST",
      "api/v1/stories",
      {
        title: `${character.name}: ${description.slice(0, 60) || "a scene"}`,
        characterIds: [character.id],
        pages: [{ pageNumber: 1, text: f.text.value.trim(), sceneDescription: description || null }],
      },
      { key: newKey() },
    );
    const job = await api(
      "POST",
      "api/v1/images/scenes",
      {
        storyId: story.id,
        pageNumber: 1,
        characterIds: [character.id],
        sceneDescription: description || null,
        style: f.style.value,
        options: { aspectRatio: f.aspectRatio.value, includeText: f.includeText.checked },
      },
      { key: newKey() },
    );
    track(new JobCard(job.jobId, { kind: "scene", count: 1, title: `Scene: ${story.title}`, hooks }));
  });
});

const UNFINISHED = ["accepted", "queued", "running"];

function jobTitle(job) {
  const who = state.characters.find((c) => c.id === job.characterId);
  const name = who ? `: ${who.name}` : "";
  if (job.kind === "pack") return `Pack of ${job.total}${name}`;
  if (job.kind === "story") return `Story of ${job.total} images`;
  if (job.kind === "prompt") return "Prompt";
  return `${job.kind[0].toUpperCase()}${job.kind.slice(1)}${name}`;
}

const RECENT_ENDED = 10;

/**
 * After a reload: the jobs still running come back, their streams replayed from the start,
 * and so do the newest jobs that ended, drawn from their records with their images.
 */
async function resumeJobs() {
  const data = await api("GET", "api/v1/jobs?limit=50");
  const jobs = (data.items || data.jobs || []).filter((job) => !state.jobs.has(job.jobId));
  // A cancelled job whose running images have not reported yet has no finishedAt: follow it.
  const live = (job) => UNFINISHED.includes(job.status) || !job.finishedAt;
  const running = new Set(jobs.filter(live).map((job) => job.jobId));
  const ended = jobs.filter((job) => !running.has(job.jobId)).slice(0, RECENT_ENDED);
  const shown = jobs.filter((job) => running.has(job.jobId) || ended.includes(job));
  // Oldest first: track() prepends, so the newest ends on top.
  for (const job of shown.reverse()) {
    const card = new JobCard(job.jobId, { kind: job.kind, count: job.total, title: jobTitle(job), hooks });
    if (running.has(job.jobId)) {
      track(card);
      card.showQueue(job.queue);
      card.refreshImages();
    } else {
      track(card, { follow: false });
      api("GET", `api/v1/jobs/${encodeURIComponent(job.jobId)}`)
        .then((record) => card.showEnded(record))
        .catch((error) => hooks.error(error));
    }
  }
}

$("portrait-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const character = requireCharacter();
    const f = form.elements;
    const options = { quality: f.quality.value };
    if (f.model.value.trim()) options.model = f.model.value.trim();
    const body = { characterId: character.id, style: f.style.value, options };
    const job = await api("POST", "api/v1/images/characters", body, { key: newKey() });
    const card = new JobCard(job.jobId, { kind: "portrait", count: 1, title: `Portrait: ${character.name}`, hooks });
    card.estimate(job.estimatedCompletionTime);
    track(card);
  });
});

$("prompt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const f = form.elements;
    const body = {
      prompt: f.prompt.value.trim(),
      style: f.style.value,
      width: Number(f.width.value),
      height: Number(f.height.value),
    };
    const job = await api("POST", "api/generate", body, { key: newKey() });
    track(new JobCard(job.job_id, { kind: "prompt", count: 1, title: `Prompt: ${body.prompt.slice(0, 60)}`, hooks }));
  });
});

/** Upload with multipart/form-data (api() speaks JSON); errors as api() reports them. */
async function upload(path, formData) {
  const response = await fetch(new URL(path, document.baseURI), {
    method: "POST",
    headers: { Authorization: `Bearer ${getToken()}`, "Idempotency-Key": newKey() },
    body: formData,
  }).catch(() => {
    throw new ApiError(0, "Cannot reach the gateway; is `imagegen up` still running?");
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw describe(response.status, data, response.headers.get("Retry-After"));
  return data;
}

$("photos-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  submitting(form, async () => {
    const character = requireCharacter();
    const files = [...form.elements.photos.files];
    if (files.length === 0) throw new Error("Choose one or more photos first.");
    const data = new FormData();
    for (const file of files) data.append("photos", file);
    await upload(`api/v1/characters/${encodeURIComponent(character.id)}/reference-photos`, data);
    form.reset();
    await loadCharacters(character.id);
    const total = (selectedCharacter()?.referencePhotos || []).length;
    $("photos-info").textContent = `${character.name} has ${total} reference photo${total === 1 ? "" : "s"}.`;
  });
});

// --- gallery and the image dialog -----------------------------------------------------

const dialog = new ImageDialog({
  onChange: () => loadGallery().catch(showError),
  onRegenerate: (accepted, title) =>
    track(new JobCard(accepted.jobId, { kind: "regenerate", count: 1, title, hooks })),
});

const hooks = {
  openImage: (imageId) => dialog.open(imageId),
  // A finished job may have built the character's reference set: reload both.
  finished: () => loadCharacters().catch(showError),
  error: showError,
};

async function loadGallery() {
  const character = selectedCharacter();
  const gallery = $("gallery");
  if (!character) {
    gallery.replaceChildren();
    return;
  }
  // Ready images only: queued, failed and cancelled ones have no picture to show (their
  // jobs' cards say what became of them).
  const query = new URLSearchParams({ characterId: character.id, status: "completed", limit: "100" });
  const data = await api("GET", `api/v1/images?${query}`);
  const items = data.images || data.items || [];
  gallery.replaceChildren(
    ...items.map((image) => {
      const tile = document.createElement("button");
      tile.type = "button";
      tile.className = "tile";
      tile.dataset.imageId = image.id;
      tile.setAttribute("aria-label", `Open ${image.type} image, version ${image.version}`);
      const pic = document.createElement("div");
      pic.className = "pic";
      if (image.thumbnailUrl) {
        const img = document.createElement("img");
        img.src = image.thumbnailUrl;
        img.alt = "";
        pic.append(img);
      }
      const meta = document.createElement("span");
      meta.textContent = `${image.type} · v${image.version} `;
      const badge = document.createElement("span");
      badge.className = `badge ${image.reviewStatus}`;
      badge.textContent = image.reviewStatus;
      meta.append(badge);
      tile.append(pic, meta);
      showLikeness(tile, image.consistencyScore);
      tile.addEventListener("click", () => dialog.open(image.id));
      return tile;
    }),
  );
  if (items.length === 0) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "No images of this character yet.";
    gallery.append(empty);
  }
}

$("refresh-gallery").addEventListener("click", () => loadGallery().catch(showError));

// --- start ----------------------------------------------------------------------------

function fillStyleSelects() {
  for (const select of document.querySelectorAll("select[data-styles]")) {
    const options = STYLES.map((name) => new Option(name.replace(/_/g, " "), name));
    if (select.dataset.blank) options.unshift(new Option(select.dataset.blank, ""));
    select.replaceChildren(...options);
    if (select.dataset.default) select.value = select.dataset.default;
  }
}

function start() {
  fillStyleSelects();
  installStoryEditor({ track, submitting, hooks });
  // `imagegen up` prints a link that carries the token: keep it, then drop it from the URL.
  const params = new URLSearchParams(location.search);
  const fromLink = params.get("token");
  if (fromLink) {
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  const token = fromLink || getToken();
  $("token").value = token;
  if (token) signIn(token).catch(showError);
  else showSignIn(false);
}

start();
