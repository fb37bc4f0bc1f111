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
-- Who may vote: 'anyone', or 'verified' (voter tokens only). Added after the first release.
ALTER TABLE polls ADD COLUMN IF NOT EXISTS voters TEXT NOT NULL DEFAULT 'anyone'
    CHECK (voters IN ('anyone', 'verified'));

-- Poll ids for every query node (nextval is atomic across sessions). Polls written before the
-- sequence existed are skipped over.
CREATE SEQUENCE IF NOT EXISTS poll_ids;
SELECT setval('poll_ids', m) FROM (SELECT max(id) AS m FROM polls) s
 WHERE m IS NOT NULL AND m >= (SELECT last_value FROM poll_ids);

-- Absolute partial tallies, one row per (poll, partition); written only with a higher offset, or the
-- same offset and a higher complete_until (a stale or zombie processor cannot overwrite a newer one):
--   INSERT … ON CONFLICT (poll_id, partition) DO UPDATE SET … WHERE partial_tallies."offset" < EXCLUDED."offset"
--     OR (partial_tallies."offset" = EXCLUDED."offset" AND partial_tallies.complete_until < EXCLUDED.complete_until)
CREATE TABLE IF NOT EXISTS partial_tallies (
    poll_id        BIGINT NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       BIGINT NOT NULL,
    complete_until BIGINT NOT NULL,        -- copy of the tally's field, for the write condition
    tally          BYTEA NOT NULL,         -- Avro datum of io.crowdtick.PartialTally, windows left out
    PRIMARY KEY (poll_id, partition)
);

-- Event-time windows per (poll, partition), each written only with a higher offset than its own stored
-- one (a partial carries only the windows that changed, so each window merges on its own).
CREATE TABLE IF NOT EXISTS tally_windows (
    poll_id     BIGINT NOT NULL,
    partition   INTEGER NOT NULL,
    start_ms    BIGINT NOT NULL,           -- window start, milliseconds since the Unix epoch
    "offset"    BIGINT NOT NULL,
    votes       BIGINT NOT NULL,
    PRIMARY KEY (poll_id, partition, start_ms)
);

-- The processor's checkpoint of one votes partition: its whole counting state after reading every
-- record before next_offset (processor::pipeline::PartitionCounter::checkpoint). A new owner of the
-- partition restores it and reads on from next_offset instead of replaying the partition. Only a
-- higher next_offset replaces a stored one, so a stale owner cannot move it back.
CREATE TABLE IF NOT EXISTS partition_checkpoints (
    partition   INTEGER PRIMARY KEY,
    next_offset BIGINT NOT NULL,
    state       BYTEA NOT NULL,
    written_at  BIGINT NOT NULL            -- microseconds since the Unix epoch
);
