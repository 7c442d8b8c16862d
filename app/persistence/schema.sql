-- Non-PHI state of the service. Nothing here may hold a resource body, a name, a date of
-- birth, an address or free text: only Medplum resource references, versions, bot names,
-- timestamps of our own processing and stable error codes.
CREATE SCHEMA IF NOT EXISTS starvit;

-- One row per event the service has accepted: the PHI-free event key, recorded exactly once.
CREATE TABLE IF NOT EXISTS starvit.event_keys (
    id              bigserial PRIMARY KEY,
    bot             text        NOT NULL,
    subscription_id text,
    resource_type   text        NOT NULL,
    resource_id     text        NOT NULL,
    version_id      text        NOT NULL,           -- 'deleted' for delete notifications
    interaction     text        NOT NULL,           -- create | update | delete
    source          text        NOT NULL,           -- notification | sweep | replay
    patient_id      text,                           -- the Patient id used as the queue lock
    author          text,                           -- who made the version (Type/id), if known
    received_at     timestamptz NOT NULL DEFAULT now(),
    job_id          bigint,
    status          text        NOT NULL DEFAULT 'queued',  -- queued | processed | failed
    outcome         text,                           -- e.g. proposed, no_result, unchanged, retracted
    error_code      text,
    attempts        integer     NOT NULL DEFAULT 0,
    processed_at    timestamptz,
    latency_ms      double precision,
    medplum_requests integer,
    -- A version is notified once per handler whatever the interaction ('deleted' for deletes),
    -- so a sweep's copy of an event deduplicates against the notification's.
    CONSTRAINT event_keys_unique UNIQUE (bot, resource_type, resource_id, version_id)
);
CREATE INDEX IF NOT EXISTS event_keys_resource ON starvit.event_keys (resource_type, resource_id);
CREATE INDEX IF NOT EXISTS event_keys_received_at ON starvit.event_keys (received_at DESC);
CREATE INDEX IF NOT EXISTS event_keys_status ON starvit.event_keys (status) WHERE status <> 'processed';

-- Reconciliation sweep watermark per bot (Medplum `_lastUpdated` of the newest swept resource).
CREATE TABLE IF NOT EXISTS starvit.sweep_watermarks (
    bot        text PRIMARY KEY,
    since      timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Last observed state of each bot's Subscription in Medplum.
CREATE TABLE IF NOT EXISTS starvit.subscription_health (
    bot             text PRIMARY KEY,
    subscription_id text,
    status          text NOT NULL,       -- active | off | error | missing | requested
    has_error_text  boolean NOT NULL DEFAULT false,
    checked_at      timestamptz NOT NULL DEFAULT now()
);
