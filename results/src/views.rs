//! The JSON a client sees of a poll and of its results.

use crate::Snapshot;
use schemas::poll::PollState;
use schemas::{Offset, Poll, PollId, Timestamp, Visibility};
use serde::Serialize;

fn time(t: Option<Timestamp>) -> Option<String> {
    t.map(Timestamp::rfc3339_millis)
}

#[derive(Debug, Serialize)]
pub struct OptionView<'a> {
    pub id: usize,
    pub label: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Links {
    pub vote: String,
    pub results: String,
    pub qr: String,
}

#[derive(Debug, Serialize)]
pub struct PollView<'a> {
    pub id: PollId,
    pub slug: &'a str,
    pub title: &'a str,
    pub options: Vec<OptionView<'a>>,
    pub max_choices: u32,
    pub visibility: Visibility,
    /// `anyone`, or `verified` (voter tokens only).
    pub voters: schemas::Voters,
    pub state: PollState,
    pub opens_at: Option<String>,
    pub closes_at: Option<String>,
    pub opened_at: Option<String>,
    pub closed_at: Option<String>,
    pub revealed: bool,
    pub created_at: String,
    pub links: Links,
}

pub fn poll_view(p: &Poll, now: Timestamp) -> PollView<'_> {
    PollView {
        id: p.id,
        slug: &p.slug,
        title: &p.title,
        options: p
            .options
            .iter()
            .enumerate()
            .map(|(id, label)| OptionView { id, label })
            .collect(),
        max_choices: p.max_choices,
        visibility: p.visibility,
        voters: p.voters,
        state: p.state_at(now),
        opens_at: time(p.opens_at),
        closes_at: time(p.closes_at),
        opened_at: time(p.opened_at),
        closed_at: time(p.closed_at),
        revealed: p.revealed,
        created_at: p.created_at.rfc3339_millis(),
        links: Links {
            vote: format!("/p/{}", p.slug),
            results: format!("/screen/{}", p.id),
            qr: format!("/qr/{}.svg", p.slug),
        },
    }
}

#[derive(Debug, Serialize)]
pub struct OptionCount<'a> {
    pub id: usize,
    pub label: &'a str,
    pub votes: i64,
}

#[derive(Debug, Serialize)]
pub struct ResultsView<'a> {
    pub poll_id: PollId,
    /// Grows with every change of the counts; absent while they are hidden (it would tell how
    /// busy an embargoed poll is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub state: PollState,
    pub hidden: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<OptionCount<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_votes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voters: Option<i64>,
    /// Records counted per votes partition: a receipt (partition p, offset o) is included once
    /// `offsets[p] > o`. Absent while the counts are hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<&'a [Offset]>,
}

/// The results of a poll as `operator` (or the public) may see them at `now`. While hidden, the
/// view holds nothing that moves with the votes (no counts, version or offsets), so two hidden
/// views of a poll differ only when its state does.
pub fn results_view<'a>(
    p: &'a Poll,
    s: &'a Snapshot,
    operator: bool,
    now: Timestamp,
) -> ResultsView<'a> {
    let hidden = !operator && !p.results_public(now);
    let mut counts = s.counts.clone();
    counts.resize(p.options.len().max(counts.len()), 0);
    let visible = !hidden;
    ResultsView {
        poll_id: p.id,
        version: visible.then_some(s.version),
        is_final: s.is_final(p.close_time()),
        state: p.state_at(now),
        hidden,
        options: visible.then(|| {
            p.options
                .iter()
                .enumerate()
                .map(|(id, label)| OptionCount {
                    id,
                    label,
                    votes: counts.get(id).copied().unwrap_or(0),
                })
                .collect()
        }),
        total_votes: visible.then(|| counts.iter().sum()),
        voters: visible.then_some(s.voters),
        counts: visible.then_some(counts),
        offsets: visible.then_some(&s.offsets[..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embargo_hides_counts_from_the_public_only() {
        let p = Poll {
            id: 3,
            slug: "abc".into(),
            title: "t".into(),
            options: vec!["a".into(), "b".into()],
            max_choices: 1,
            visibility: Visibility::OnReveal,
            opens_at: None,
            closes_at: None,
            opened_at: Some(Timestamp(0)),
            closed_at: None,
            revealed: false,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        };
        let s = Snapshot {
            poll_id: 3,
            version: 9,
            counts: vec![4],
            voters: 4,
            ..Default::default()
        };
        let public = serde_json::to_value(results_view(&p, &s, false, Timestamp(10))).unwrap();
        assert_eq!(public["hidden"], true);
        for moving in ["counts", "version", "offsets", "total_votes", "voters"] {
            assert!(public.get(moving).is_none(), "{moving} in {public}");
        }
        let later = Snapshot {
            version: 12,
            counts: vec![7],
            voters: 7,
            offsets: vec![Offset(3), Offset(4)],
            ..s.clone()
        };
        assert_eq!(
            public,
            serde_json::to_value(results_view(&p, &later, false, Timestamp(10))).unwrap(),
            "more votes change nothing the public sees"
        );
        let op = serde_json::to_value(results_view(&p, &s, true, Timestamp(10))).unwrap();
        assert_eq!(
            op["counts"],
            serde_json::json!([4, 0]),
            "every option, zeros included"
        );
        assert_eq!(op["total_votes"], 4);
        assert_eq!(op["version"], 9);
        let revealed = Poll {
            revealed: true,
            ..p
        };
        assert_eq!(
            serde_json::to_value(results_view(&revealed, &s, false, Timestamp(10))).unwrap()
                ["hidden"],
            false
        );
    }
}
