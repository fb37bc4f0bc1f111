//! The results board's snapshot (the embedded mode): every poll's results as partials
//! ([`ResultsBoard::to_partials`]) and the tallies positions before which the board holds every
//! partial. Kept like the votes partitions' snapshots, in two generations (`results-0.checkpoint`
//! in the data directory's `log/snapshots`, by `storage::CheckpointFiles`): a start restores it and
//! reads only the tallies topic after it ([`restore`], then `board::follow_tallies`); once a newer
//! one is written, the tallies before the older one are released ([`keep_saving`]), which
//! `log.retire_after_snapshot` deletes. A start after a three-hour show then reads the board and a
//! few seconds of partials, not every partial of the show.
//!
//! A snapshot may hold more than the partials before its positions (the positions are read first,
//! the board after): merging is idempotent and order-free, so the partials after the positions
//! applied on top give what applying every partial gives.
//!
//! Format (little endian): `[u32 1][u32 tallies partitions][u64 position]…[u32 partials]`, then
//! per partial `[u32 length][the PartialTally, Avro]`; the file's CRC is `CheckpointFiles`'.

use crate::board::{ReadFrom, ResultsBoard};
use schemas::{Offset, PartialTally, Partition};
use std::sync::Arc;
use std::time::Duration;
use storage::{CheckpointStore, Log, Shutdown, TallyStoreError, Topic};

const FORMAT: u32 = 1;
/// The snapshot files' name among the votes snapshots (`storage::CheckpointFiles::open_named`).
pub const NAME: &str = "results";
/// The board's one snapshot is stored as "partition" 0 of its files.
const KEY: Partition = Partition(0);
/// Where the snapshot is, for the messages that send an operator to it.
pub(crate) const WHERE: &str = "log/snapshots/results-0.checkpoint in the data directory";

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error(
        "the results snapshot ({at}) cannot be read, written by another version of CrowdTick?: \
         {0}. Run the version that wrote it, or move the file away to rebuild the results from \
         the tallies topic (complete only when log.retire_after_snapshot was off; readiness says \
         when they are short)",
        at = WHERE
    )]
    Format(String),
    #[error(transparent)]
    Store(#[from] TallyStoreError),
}

/// A snapshot of the board holding every partial before `positions`.
pub fn encode(positions: &[Offset], partials: &[PartialTally]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * positions.len() + 64 * partials.len());
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for p in positions {
        out.extend_from_slice(&p.count().to_le_bytes());
    }
    out.extend_from_slice(&(partials.len() as u32).to_le_bytes());
    for t in partials {
        let avro = t.to_avro();
        out.extend_from_slice(&(avro.len() as u32).to_le_bytes());
        out.extend_from_slice(&avro);
    }
    out
}

/// The positions and partials of a snapshot [`encode`] wrote.
pub fn decode(mut bytes: &[u8]) -> Result<(Vec<Offset>, Vec<PartialTally>), SavedError> {
    let size = bytes.len();
    let short = || SavedError::Format("it ends early".into());
    let mut take = |n: usize| -> Result<&[u8], SavedError> {
        let (head, rest) = bytes.split_at_checked(n).ok_or_else(short)?;
        bytes = rest;
        Ok(head)
    };
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let format = u32_of(take(4)?);
    if format != FORMAT {
        return Err(SavedError::Format(format!("format {format}, not {FORMAT}")));
    }
    let n = u32_of(take(4)?) as usize;
    let positions = take(n.checked_mul(8).ok_or_else(short)?)?
        .chunks_exact(8)
        .map(|b| Offset::from_count(u64::from_le_bytes(b.try_into().unwrap())))
        .collect();
    let n = u32_of(take(4)?) as usize;
    // Each partial takes at least its 4-byte length: a count past that is damage, not a size.
    let mut partials = Vec::with_capacity(n.min(size / 4));
    for _ in 0..n {
        let len = u32_of(take(4)?) as usize;
        let t = PartialTally::from_avro(take(len)?)
            .map_err(|e| SavedError::Format(format!("a partial: {e}")))?;
        partials.push(t);
    }
    if !bytes.is_empty() {
        return Err(SavedError::Format(format!(
            "{} bytes after the end",
            bytes.len()
        )));
    }
    Ok((positions, partials))
}

/// The sum of the positions: it grows with every snapshot that holds more (how the snapshot files
/// tell the newer one).
fn progress(positions: &[Offset]) -> Offset {
    Offset(positions.iter().map(|p| p.0).sum())
}

/// Applies the stored snapshot to `board`; where to read the tallies topic from (its positions,
/// or the start without one).
pub async fn restore(
    board: &ResultsBoard,
    snapshots: &dyn CheckpointStore,
) -> Result<ReadFrom, SavedError> {
    let Some((_, bytes)) = snapshots.load_checkpoint(KEY).await? else {
        return Ok(ReadFrom::Positions(Vec::new()));
    };
    let (positions, partials) = decode(&bytes)?;
    tracing::info!(
        partials = partials.len(),
        positions = ?positions,
        "results board restored from its snapshot"
    );
    for t in partials {
        board.apply(t);
    }
    Ok(ReadFrom::Positions(positions))
}

/// Every `every`, once the board has read further, writes a snapshot of it, then releases the
/// tallies before the previous one (`restored`: what the start read from), until `shutdown`.
/// Start it once the board is filled. A board short of retired partials is never saved: its
/// snapshot would hide that from the next start.
pub fn keep_saving(
    board: Arc<ResultsBoard>,
    log: Arc<dyn Log>,
    snapshots: Arc<dyn CheckpointStore>,
    every: Duration,
    restored: &ReadFrom,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let mut newest = match restored {
        ReadFrom::Positions(p) if !p.is_empty() => Some(p.clone()),
        _ => None,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.signalled() => return,
            }
            if board.is_short() {
                continue;
            }
            let positions = board.read_up_to();
            if newest.as_ref() == Some(&positions) || positions.iter().all(|p| *p == Offset::ZERO) {
                continue;
            }
            let state = encode(&positions, &board.to_partials());
            let bytes = state.len();
            match snapshots
                .put_checkpoint(KEY, progress(&positions), state)
                .await
            {
                Ok(true) => {
                    tracing::debug!(bytes, positions = ?positions, "results board snapshot written");
                    // The one before is now the older generation: a start needs nothing before it.
                    if let Some(older) = newest.replace(positions) {
                        for (p, &below) in older.iter().enumerate() {
                            if let Err(e) =
                                log.release(Topic::Tallies, Partition::at(p), below).await
                            {
                                tracing::warn!(partition = p, error = %e, "releasing the tallies a results snapshot holds failed");
                            }
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "writing the results board's snapshot failed; retrying at the next");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
