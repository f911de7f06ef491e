// One image in a dialog: its versions, review (approve/reject), delete, regenerate.

import { api, ApiError, newKey } from "./api.js";

const $ = (id) => document.getElementById(id);
const DEMO_LABEL = "Demo output (DCGAN trained on DigiFace-1M).";
const REVIEW_POLL_MS = 500;
const REVIEW_POLL_TRIES = 40;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class ImageDialog {
  /** `onChange()` after a review, delete or new version; `onRegenerate(accepted, title)` returns a JobCard. */
  constructor({ onChange, onRegenerate }) {
    this.onChange = onChange;
    this.onRegenerate = onRegenerate;
    this.dialog = $("image-dialog");
    this.image = null;
    this.shownVersion = null;
    $("close-dialog").addEventListener("click", () => this.dialog.close());
    $("approve").addEventListener("click", () => this.review("approved"));
    $("reject").addEventListener("click", () => this.review("rejected"));
    $("delete-image").addEventListener("click", () => this.remove());
    $("regenerate-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.regenerate(event.target);
    });
  }

  error(error) {
    $("dialog-error").textContent = error ? error.message || String(error) : "";
  }

  async open(imageId) {
    this.error();
    $("regen-status").textContent = "";
    $("regen-progress").hidden = true;
    try {
      await this.load(imageId);
      if (!this.dialog.open) this.dialog.showModal();
    } catch (error) {
      this.error(error);
      if (!this.dialog.open) this.dialog.showModal();
    }
  }

  async load(imageId, version) {
    this.image = await api("GET", `api/v1/images/${encodeURIComponent(imageId)}`);
    this.render(version || this.image.version);
    return this.image;
  }

  render(version) {
    const image = this.image;
    const shown = image.versions.find((v) => v.version === version) || image;
    this.shownVersion = shown.version;
    $("image-title").textContent = `${image.type} image · version ${shown.version} of ${image.versions.length}`;
    const big = $("detail-image");
    if (shown.url) big.src = shown.url;
    else big.removeAttribute("src");
    big.alt = `${image.type} image, version ${shown.version}`;
    $("detail-demo").textContent = shown.demo ? DEMO_LABEL : "";

    const list = $("versions");
    list.replaceChildren(
      ...image.versions.map((v) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.version = String(v.version);
        button.setAttribute("aria-pressed", String(v.version === shown.version));
        button.setAttribute("aria-label", `Version ${v.version}, ${v.status}, ${v.reviewStatus}`);
        if (v.thumbnailUrl) {
          const img = document.createElement("img");
          img.src = v.thumbnailUrl;
          img.alt = "";
          button.append(img);
        }
        const label = document.createElement("span");
        label.textContent = v.status === "completed" ? `v${v.version}` : `v${v.version} ${v.status}`;
        button.append(label);
        button.addEventListener("click", () => this.render(v.version));
        item.append(button);
        return item;
      }),
    );

    const rows = [
      ["Version", `${shown.version}${shown.parentVersion ? ` (from v${shown.parentVersion})` : ""}`],
      ["Status", shown.status],
      ["Review", shown.reviewStatus],
      ["Style", shown.style],
      ["Seed", shown.seed],
      ["Model", [shown.provider, shown.model].filter(Boolean).join(" / ")],
      ["Size", shown.width ? `${shown.width}×${shown.height}` : ""],
      ["Likeness", shown.consistencyScore == null ? "" : shown.consistencyScore.toFixed(2)],
      ["Quality", shown.qualityScore == null ? "" : shown.qualityScore.toFixed(2)],
      ["Scene", sceneText(shown)],
      ["Prompt", shown.prompt],
      ["Created", new Date(shown.createdAt).toLocaleString()],
    ];
    $("detail-meta").replaceChildren(
      ...rows.flatMap(([name, value]) => {
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
        if (name === "Review") dd.dataset.review = shown.reviewStatus;
        return [dt, dd];
      }),
    );
    const current = shown.version === image.version;
    $("approve").disabled = !current || image.status !== "completed";
    $("reject").disabled = !current || image.status !== "completed";
  }

  /** Reviews are confirmed by the image store: show `pending` until it has. */
  async review(decision) {
    this.error();
    const imageId = this.image.id;
    $("approve").disabled = $("reject").disabled = true;
    try {
      await api("POST", `api/v1/images/${encodeURIComponent(imageId)}/review`, { decision }, { key: newKey() });
      await this.load(imageId);
      for (let i = 0; i < REVIEW_POLL_TRIES && this.image.reviewStatus === "pending"; i += 1) {
        await sleep(REVIEW_POLL_MS);
        await this.load(imageId);
      }
      this.onChange();
    } catch (error) {
      this.error(error);
      if (this.image) this.render(this.shownVersion);
    }
  }

  async remove() {
    if (!confirm("Delete this image and all its versions?")) return;
    this.error();
    try {
      await api("DELETE", `api/v1/images/${encodeURIComponent(this.image.id)}`);
      this.dialog.close();
      this.onChange();
    } catch (error) {
      this.error(error);
    }
  }

  async regenerate(form) {
    this.error();
    const f = form.elements;
    const modifications = {};
    if (f.prompt.value.trim()) modifications.prompt = f.prompt.value.trim();
    if (f.style.value) modifications.style = f.style.value;
    if (f.seed.value !== "") modifications.seed = Number(f.seed.value);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const imageId = this.image.id;
    try {
      const accepted = await api(
        "POST",
        `api/v1/images/${encodeURIComponent(imageId)}/regenerate`,
        { modifications },
        { key: newKey() },
      );
      $("regen-status").textContent = `Making version ${accepted.version}…`;
      const bar = $("regen-progress");
      bar.hidden = false;
      bar.value = 0;
      await this.load(imageId, this.shownVersion);
      const card = this.onRegenerate(accepted, `Version ${accepted.version} of image ${imageId.slice(0, 8)}`);
      card.onEvent((type, payload) => {
        bar.value = card.progress.value;
        if (type !== "end") return;
        bar.hidden = true;
        button.disabled = false;
        const status = payload ? payload.status : "unknown";
        $("regen-status").textContent =
          status === "completed" ? `Version ${accepted.version} is ready.` : `Version ${accepted.version}: ${status}.`;
        if (this.dialog.open && this.image && this.image.id === imageId) {
          this.load(imageId).catch((error) => this.error(error));
        }
        this.onChange();
      });
    } catch (error) {
      this.error(error);
      button.disabled = false;
      if (error instanceof ApiError && error.status === 409) $("regen-status").textContent = "";
    }
  }
}

const SCENE_SOURCES = {
  request: "as asked",
  llm: "written by the LLM from the page text",
  extractor: "taken from the page text",
};

/** The scene an image shows and who wrote it ("" for portraits and packs). */
function sceneText(image) {
  if (!image.sceneDescription) return "";
  const source = SCENE_SOURCES[image.sceneSource];
  return source ? `${image.sceneDescription} (${source})` : image.sceneDescription;
}
