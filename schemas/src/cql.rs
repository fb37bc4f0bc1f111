//! The statements of the ScyllaDB tally store (`storage/src/scylla.rs`), for the keyspace in
//! `{ks}`; the tables they use are `cql/tallies.cql`. Every write carries `USING TIMESTAMP ?`
//! (the rule is in that file); only the checkpoints use lightweight transactions (`IF`).

pub const PUT_PARTIAL: &str =
    "INSERT INTO {ks}.partials (poll_id, votes_partition, tally) VALUES (?, ?, ?) USING TIMESTAMP ?";
pub const PUT_COMPLETE_UNTIL: &str =
    "UPDATE {ks}.partials USING TIMESTAMP ? SET complete_until = ? WHERE poll_id = ? AND votes_partition = ?";
pub const PUT_WINDOW: &str =
    "INSERT INTO {ks}.windows (poll_id, votes_partition, start_ms, votes) VALUES (?, ?, ?, ?) USING TIMESTAMP ?";
pub const PUT_PARTITION_POLL: &str =
    "INSERT INTO {ks}.partition_polls (votes_partition, poll_id) VALUES (?, ?) USING TIMESTAMP ?";
pub const POLL_PARTIALS: &str =
    "SELECT poll_id, votes_partition, tally, complete_until FROM {ks}.partials WHERE poll_id = ?";
pub const POLL_WINDOWS: &str =
    "SELECT poll_id, votes_partition, start_ms, votes FROM {ks}.windows WHERE poll_id = ?";
pub const POLL_PARTITION_PARTIALS: &str = "SELECT poll_id, votes_partition, tally, complete_until FROM {ks}.partials WHERE poll_id = ? AND votes_partition = ?";
pub const POLL_PARTITION_WINDOWS: &str = "SELECT poll_id, votes_partition, start_ms, votes FROM {ks}.windows WHERE poll_id = ? AND votes_partition = ?";
pub const ALL_PARTIALS: &str =
    "SELECT poll_id, votes_partition, tally, complete_until FROM {ks}.partials";
pub const ALL_WINDOWS: &str = "SELECT poll_id, votes_partition, start_ms, votes FROM {ks}.windows";
pub const PARTITION_POLLS: &str =
    "SELECT poll_id FROM {ks}.partition_polls WHERE votes_partition = ?";
pub const NEW_CHECKPOINT: &str =
    "INSERT INTO {ks}.checkpoints (votes_partition, next_offset, state) VALUES (?, ?, ?) IF NOT EXISTS";
pub const FURTHER_CHECKPOINT: &str =
    "UPDATE {ks}.checkpoints SET next_offset = ?, state = ? WHERE votes_partition = ? IF next_offset < ?";
pub const LOAD_CHECKPOINT: &str =
    "SELECT next_offset, state FROM {ks}.checkpoints WHERE votes_partition = ?";
pub const CLEAR_CHECKPOINT: &str =
    "DELETE FROM {ks}.checkpoints WHERE votes_partition = ? IF EXISTS";
