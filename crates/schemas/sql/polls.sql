-- CrowdTick poll metadata (PostgreSQL). Applied by `crowdtick migrate` or on service start.
CREATE TABLE IF NOT EXISTS polls (
    id          BIGINT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL CHECK (length(title) <= 255),
    options     JSONB NOT NULL,            -- ["label 0", "label 1", …]; option id = index
    max_choices INTEGER NOT NULL CHECK (max_choices >= 1),
    visibility  TEXT NOT NULL CHECK (visibility IN ('live', 'after_close', 'on_reveal')),
    opens_at    BIGINT,                    -- microseconds since the Unix epoch, scheduled
    closes_at   BIGINT,
    opened_at   BIGINT,                    -- set by a manual open
    closed_at   BIGINT,                    -- set by a manual close
    revealed    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    creator     TEXT
);

-- Absolute partial tallies, one row per (poll, partition); written only with a higher offset.
CREATE TABLE IF NOT EXISTS partial_tallies (
    poll_id     BIGINT NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    BIGINT NOT NULL,
    tally       BYTEA NOT NULL,            -- Avro datum of io.crowdtick.PartialTally
    PRIMARY KEY (poll_id, partition)
);
