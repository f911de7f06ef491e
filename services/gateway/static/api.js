// The gateway's HTTP API: bearer token, JSON in and out, errors turned into sentences.

const TOKEN_KEY = "imagegen.token";

export const STYLES = [
  "standard", "cartoon", "watercolor", "realistic", "painterly", "anime", "storybook",
  "3d_render", "line_art", "flat_logo", "abstract", "minimalist", "vintage", "grunge",
];

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** The token's claims, for display only (the gateway verifies it on every call). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** An API refusal: `message` is for people, `fields` maps "attributes.hairColour" to its problem. */
export class ApiError extends Error {
  constructor(status, message, fields = {}) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

const LEAD = {
  400: "The request was malformed",
  401: "Not signed in (or the token expired)",
  403: "Not allowed",
  404: "Not found",
  409: "Not possible right now",
  413: "Too large",
  422: "Please check",
  429: "Too many requests",
  503: "The service is busy",
};

/** A field's dotted path without its location prefix: ["body","attributes","hairColour"]. */
function fieldPath(loc) {
  const parts = Array.isArray(loc) ? loc.slice() : [];
  if (["body", "query", "path", "header"].includes(parts[0])) parts.shift();
  return parts.join(".");
}

export function describe(status, body, retryAfter) {
  const lead = LEAD[status] || `Error ${status}`;
  const detail = body && body.detail;
  const fields = {};
  let text;
  if (Array.isArray(detail)) {
    text = detail
      .map((problem) => {
        const path = fieldPath(problem.loc);
        if (path) fields[path] = problem.msg;
        return path ? `${path}: ${problem.msg}` : problem.msg;
      })
      .join("; ");
  } else if (typeof detail === "string") {
    text = detail;
  }
  let message = text ? `${lead}: ${text}` : lead;
  if (status === 429 && retryAfter) message += ` (try again in ${retryAfter} s)`;
  return new ApiError(status, message, fields);
}

export function newKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

/**
 * Call the API. Actions that create work pass `key` (see newKey): the Idempotency-Key makes
 * a retried request return the first job instead of starting a second one.
 */
const reachability = new Set();

/** `listener(up)` after every call: false when the gateway could not be reached, else true. */
export function onReachability(listener) {
  reachability.add(listener);
}

function reached(up) {
  for (const listener of reachability) listener(up);
}

let probing = false;

/** Poll /healthz until the gateway answers, then tell the listeners it is back. */
export function probeGateway(intervalMs = 2000) {
  if (probing) return;
  probing = true;
  const attempt = async () => {
    try {
      await fetch(new URL("healthz", document.baseURI), { cache: "no-store" });
      probing = false;
      reached(true);
    } catch {
      setTimeout(attempt, intervalMs);
    }
  };
  setTimeout(attempt, intervalMs);
}

export async function api(method, path, body, { key } = {}) {
  const headers = { Authorization: `Bearer ${getToken()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    reached(false);
    throw new ApiError(0, "Cannot reach the gateway; is `imagegen up` still running?");
  }
  reached(true);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw describe(response.status, data, response.headers.get("Retry-After"));
  return data;
}
