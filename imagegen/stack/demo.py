"""The demo that `imagegen up --demo` runs: a character, a 5-image pack, live progress."""

from __future__ import annotations

import json

import httpx

DEMO_CHARACTER = {
    "name": "Mira",
    "description": "a cheerful explorer",
    "attributes": {"ageRange": "30s", "hairColour": "dark brown", "eyeColour": "green"},
    "artStyle": "realistic",
}


def _demo_character(client: httpx.Client) -> dict[str, object]:
    """The demo's character: the one an earlier run made (same name and description),
    else a new one, so every `./dev up` does not add another."""
    cursor: str | None = None
    for _ in range(50):  # 50 pages of 100: enough for any dev account
        params: dict[str, str | int] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/characters", params=params).raise_for_status().json()
        for found in page["items"]:
            if (found["name"], found["description"]) == (
                DEMO_CHARACTER["name"],
                DEMO_CHARACTER["description"],
            ):
                made: dict[str, object] = found
                return made
        cursor = page.get("nextCursor")
        if not cursor:
            break
    created: dict[str, object] = (
        client.post("/api/v1/characters", json=DEMO_CHARACTER).raise_for_status().json()
    )
    return created


def run_demo(gateway_url: str, token: str, image_count: int = 5) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=30) as client:
        character = _demo_character(client)
        print(f"demo: character {character['id']} (seed {character['seed']})", flush=True)
        job = (
            client.post(
                "/api/generate", json={"character_id": character["id"], "image_count": image_count}
            )
            .raise_for_status()
            .json()
        )
        job_id = job["job_id"]
        print(f"demo: job {job_id} queued ({image_count} images)", flush=True)
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=None) as stream:
            event_type = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event_type = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event_type not in ("", "ping", "queue_status"):
                    data = json.loads(line.split(":", 1)[1]).get("data", {})
                    index = data.get("image_index", data.get("imageIndex", ""))
                    print(f"demo: {event_type} {index}".rstrip(), flush=True)
                    if event_type == "pack_completed":  # every job's last word
                        break
        result = client.get(f"/api/generate/{job_id}").raise_for_status().json()
        print(f"demo: status {result['status']}, {len(result['images'])} images", flush=True)
        for image in result["images"]:
            label = " (demo output: DCGAN trained on DigiFace-1M)" if image.get("demo") else ""
            print(f"demo: image {image['index']}{label}: {image['url']}", flush=True)
