// The story editor: a title, a cast, pages of text; "Generate all" illustrates every page.

import { api, newKey } from "./api.js";
import { JobCard } from "./jobs.js";

const $ = (id) => document.getElementById(id);

let stories = [];

function pageItem(number) {
  const item = document.createElement("li");
  item.className = "page";
  const text = document.createElement("label");
  text.className = "wide";
  text.append(`Page ${number} text`);
  const area = document.createElement("textarea");
  area.name = "text";
  area.rows = 2;
  area.maxLength = 4000;
  text.append(area);
  const scene = document.createElement("label");
  scene.className = "wide";
  scene.append(`Page ${number} scene (optional)`);
  const input = document.createElement("input");
  input.name = "sceneDescription";
  input.maxLength = 2000;
  input.placeholder = "drawn from the text when left empty";
  scene.append(input);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = `Remove page ${number}`;
  remove.addEventListener("click", () => {
    item.remove();
    renumber();
  });
  item.append(text, scene, remove);
  return item;
}

function renumber() {
  const items = [...$("story-pages").children];
  const kept = items.map((item) => ({
    text: item.querySelector("[name=text]").value,
    scene: item.querySelector("[name=sceneDescription]").value,
  }));
  $("story-pages").replaceChildren(
    ...kept.map((values, index) => {
      const item = pageItem(index + 1);
      item.querySelector("[name=text]").value = values.text;
      item.querySelector("[name=sceneDescription]").value = values.scene;
      return item;
    }),
  );
}

/** Keep the cast list in step with the user's characters (the selected one ticked). */
export function fillCast(characters, selectedId) {
  const select = $("story-cast");
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  if (chosen.size === 0 && selectedId) chosen.add(selectedId);
  select.replaceChildren(
    ...characters.map((c) => {
      const option = new Option(c.name, c.id);
      option.selected = chosen.has(c.id);
      return option;
    }),
  );
}

function storyBody(form) {
  const pages = [...$("story-pages").children].map((item, index) => {
    const scene = item.querySelector("[name=sceneDescription]").value.trim();
    return {
      pageNumber: index + 1,
      text: item.querySelector("[name=text]").value.trim(),
      sceneDescription: scene || null,
    };
  });
  return {
    title: form.elements.title.value.trim(),
    characterIds: [...$("story-cast").selectedOptions].map((o) => o.value),
    pages,
  };
}

/** The user's saved stories, in the picker (the one shown kept selected). */
export async function loadStories(selectId) {
  const data = await api("GET", "api/v1/stories?limit=100");
  stories = data.items || [];
  const pick = $("story-pick");
  const keep = selectId ?? pick.value;
  pick.replaceChildren(
    new Option("a new story", ""),
    ...stories.map((story) => {
      const option = new Option(story.title, story.id);
      option.selected = story.id === keep;
      return option;
    }),
  );
}

function showStory(story) {
  const form = $("story-form");
  form.elements.title.value = story ? story.title : "";
  const cast = new Set(story ? story.characterIds : []);
  if (story) for (const option of $("story-cast").options) option.selected = cast.has(option.value);
  const pages = story && story.pages.length ? story.pages : [{ text: "", sceneDescription: "" }];
  $("story-pages").replaceChildren(
    ...pages.map((page, index) => {
      const item = pageItem(index + 1);
      item.querySelector("[name=text]").value = page.text || "";
      item.querySelector("[name=sceneDescription]").value = page.sceneDescription || "";
      return item;
    }),
  );
  $("story-info").textContent = "";
}

/** Create the story, or update the one picked; returns it. */
async function saveStory(form) {
  const id = $("story-pick").value;
  const body = storyBody(form);
  const story = id
    ? await api("PATCH", `api/v1/stories/${encodeURIComponent(id)}`, body)
    : await api("POST", "api/v1/stories", body, { key: newKey() });
  await loadStories(story.id);
  $("story-info").textContent = `Saved "${story.title}" (${story.pages.length} pages).`;
  return story;
}

/** `track(card)` shows a job; `submitting(form, action)` runs an action with errors shown. */
export function installStoryEditor({ track, submitting, hooks }) {
  $("story-pick").addEventListener("change", (event) => {
    showStory(stories.find((story) => story.id === event.target.value) || null);
  });
  $("save-story").addEventListener("click", () => {
    const form = $("story-form");
    submitting(form, () => saveStory(form));
  });
  $("story-pages").append(pageItem(1));
  $("add-page").addEventListener("click", () => {
    const list = $("story-pages");
    list.append(pageItem(list.children.length + 1));
    list.lastElementChild.querySelector("textarea").focus();
  });
  $("story-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    submitting(form, async () => {
      const story = await saveStory(form);
      const accepted = await api(
        "POST",
        `api/v1/images/stories/${encodeURIComponent(story.id)}/generate-all`,
        {
          style: form.elements.style.value,
          includeCharacterPortraits: form.elements.portraits.checked,
          includeSceneImages: true,
          imagesPerPage: 1,
        },
        { key: newKey() },
      );
      const card = new JobCard(accepted.batchJobId, {
        kind: "story",
        count: accepted.totalImages,
        title: `Story: ${story.title}`,
        hooks,
      });
      card.estimate(accepted.estimatedCompletionTime);
      track(card);
    });
  });
}
