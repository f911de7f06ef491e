"""The gateway's schema (`gateway`), as numbered migrations applied once each at start-up."""

from __future__ import annotations

from services.gateway.webhooks.store import MIGRATION as WEBHOOKS_V4

SCHEMA = "gateway"

_V1 = """
CREATE TABLE characters (
    id              text PRIMARY KEY,
    user_id         text NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    attributes      jsonb NOT NULL DEFAULT '{}',
    style_modifiers jsonb NOT NULL DEFAULT '[]',
    art_style       text NOT NULL,
    seed            bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX characters_user_created ON characters (user_id, created_at DESC);

CREATE TABLE jobs (
    id           text PRIMARY KEY,
    user_id      text NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL,
    character_id text,
    total        integer NOT NULL DEFAULT 0,
    completed    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    last_seq     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC);

CREATE TABLE images (
    id           text PRIMARY KEY,
    job_id       text NOT NULL,
    user_id      text NOT NULL,
    index        integer NOT NULL,
    character_id text NOT NULL,
    version      integer NOT NULL DEFAULT 1,
    renditions   jsonb NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    size_bytes   bigint NOT NULL,
    seed         bigint NOT NULL,
    model        text NOT NULL,
    demo         boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_job_index ON images (job_id, index);

-- Final failures counted once per image, however often the event is re-emitted.
CREATE TABLE image_failures (
    job_id      text NOT NULL,
    image_index integer NOT NULL,
    PRIMARY KEY (job_id, image_index)
);

-- The event log: `id` is the SSE id, `event_id` dedupes redeliveries.
CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    event_id   text NOT NULL UNIQUE,
    job_id     text,
    user_id    text,
    type       text NOT NULL,
    seq        integer,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_job_id ON events (job_id, id);
CREATE INDEX events_user_id ON events (user_id, id);
"""

# Characters gain a reference set and photos; stories; idempotency keys; rate-limit windows.
_V2 = """
ALTER TABLE characters
    ADD COLUMN updated_at            timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN reference_job_id      text,
    ADD COLUMN reference_fingerprint text;
CREATE INDEX characters_user_page ON characters (user_id, created_at DESC, id DESC);

CREATE TABLE reference_photos (
    id           text PRIMARY KEY,
    user_id      text NOT NULL,
    character_id text NOT NULL REFERENCES characters (id) ON DELETE CASCADE,
    key          text NOT NULL,
    sha256       text NOT NULL,
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    faces        integer,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (character_id, sha256)
);

CREATE TABLE stories (
    id            text PRIMARY KEY,
    user_id       text NOT NULL,
    title         text NOT NULL,
    pages         jsonb NOT NULL,
    character_ids jsonb NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX stories_user_page ON stories (user_id, created_at DESC, id DESC);
CREATE INDEX stories_character_ids ON stories USING gin (character_ids);

-- One row per (user, key): the primary key makes concurrent duplicates claim it once.
CREATE TABLE idempotency_keys (
    user_id      text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    claim        text NOT NULL,
    state        text NOT NULL DEFAULT 'pending',
    status_code  integer,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Sliding-window counters: one row per user, bucket and fixed window.
CREATE TABLE rate_limit_windows (
    user_id      text NOT NULL,
    bucket       text NOT NULL,
    window_index bigint NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (user_id, bucket, window_index)
);
"""


# Images keyed (image_id, version) with a lifecycle status, jobs of every kind.
_V3 = """
ALTER TABLE jobs
    ADD COLUMN story_id    text,
    ADD COLUMN page_number integer,
    ADD COLUMN image_id    text,
    ADD COLUMN style       text,
    ADD COLUMN running     integer NOT NULL DEFAULT 0,
    ADD COLUMN phase       text,
    ADD COLUMN reason_code text,
    ADD COLUMN reason      text,
    ADD COLUMN cost_usd    numeric(14, 6) NOT NULL DEFAULT 0;
CREATE INDEX jobs_user_status_created ON jobs (user_id, status, created_at DESC);

-- Rows exist from the moment a version is asked for (status queued), so an image id
-- the API hands out is visible at once; stored metadata arrives with image_stored.
ALTER TABLE images DROP CONSTRAINT images_pkey;
ALTER TABLE images ADD PRIMARY KEY (id, version);
ALTER TABLE images
    ALTER COLUMN renditions SET DEFAULT '{}',
    ALTER COLUMN character_id DROP NOT NULL,
    ALTER COLUMN width DROP NOT NULL,
    ALTER COLUMN height DROP NOT NULL,
    ALTER COLUMN size_bytes DROP NOT NULL,
    ALTER COLUMN seed DROP NOT NULL,
    ALTER COLUMN model DROP NOT NULL,
    ADD COLUMN kind              text NOT NULL DEFAULT 'pack',
    ADD COLUMN status            text NOT NULL DEFAULT 'ready',
    ADD COLUMN story_id          text,
    ADD COLUMN page_number       integer,
    ADD COLUMN style             text NOT NULL DEFAULT '',
    ADD COLUMN prompt            text NOT NULL DEFAULT '',
    ADD COLUMN parent_version    integer,
    ADD COLUMN consistency_score double precision,
    ADD COLUMN flagged           boolean NOT NULL DEFAULT false,
    ADD COLUMN variations        integer NOT NULL DEFAULT 0,
    ADD COLUMN review_status     text NOT NULL DEFAULT 'unreviewed',
    ADD COLUMN pending_review    text,
    ADD COLUMN provider          text,
    ADD COLUMN cost_usd          numeric(14, 6) NOT NULL DEFAULT 0,
    ADD COLUMN stored_at         timestamptz;
CREATE INDEX images_user_created ON images (user_id, created_at DESC);
CREATE INDEX images_user_story ON images (user_id, story_id);

-- Recent generation durations for completion estimates.
CREATE INDEX events_type_id ON events (type, id);
"""

# How the image was made, as storage reports it: the full prompt pair, the scene the
# picture shows (and whether the request, the LLM or the text extractor wrote it), and
# postprocess's technical quality score.
_V5 = """
ALTER TABLE images
    ADD COLUMN negative_prompt   text NOT NULL DEFAULT '',
    ADD COLUMN scene_description text NOT NULL DEFAULT '',
    ADD COLUMN scene_source      text NOT NULL DEFAULT '',
    ADD COLUMN quality_score     double precision;
"""

# The event log is pruned by age (IMAGEGEN_EVENT_LOG_RETENTION_S, imagegen.retention).
_V6 = """
CREATE INDEX events_created_at ON events (created_at);
"""

# The job an idempotent request creates keeps one id across retries of its key
# (services/gateway/idempotent_jobs.py).
_V7 = """
ALTER TABLE idempotency_keys ADD COLUMN job_id text;
"""

# Queue status (queueing.py): each dispatched image's tier, and the waiting images by tier.
_V8 = """
ALTER TABLE images ADD COLUMN tier text;
CREATE INDEX images_queued_tier ON images (tier, created_at) WHERE status = 'queued';
"""

# Image status words follow the module spec: a stored image is `completed` (was `ready`).
# The queue estimate counts a tier's running images (queueing.py).
_V9 = """
UPDATE images SET status = 'completed' WHERE status = 'ready';
ALTER TABLE images ALTER COLUMN status SET DEFAULT 'completed';
CREATE INDEX images_generating_tier ON images (tier) WHERE status = 'generating';
"""

# Per-character face scores of an image and why an image due a consistency score has none.
_V10 = """
ALTER TABLE images
    ADD COLUMN character_scores jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN not_scored_reason text;
"""

# A character's LoRA weights (loras.py): the CharacterLora contract as JSON, or NULL.
_V11 = """
ALTER TABLE characters ADD COLUMN lora jsonb;
"""

# Who a character's and a job's images are for ("children": the stricter safety threshold).
_V12 = """
ALTER TABLE characters ADD COLUMN audience text NOT NULL DEFAULT 'general'
    CHECK (audience IN ('general', 'children'));
ALTER TABLE jobs ADD COLUMN audience text NOT NULL DEFAULT 'general'
    CHECK (audience IN ('general', 'children'));
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, WEBHOOKS_V4),
    (5, _V5),
    (6, _V6),
    (7, _V7),
    (8, _V8),
    (9, _V9),
    (10, _V10),
    (11, _V11),
    (12, _V12),
]
