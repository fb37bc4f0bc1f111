//! The polls a run votes in: created through the operator API (`POST /v1/polls`, open, live,
//! options "A", "B", …) or taken from `--poll-ids`, each with its counts before the run (the
//! baseline the expected tallies are added to; zero for a new poll).

use crate::client::Conn;
use hyper::header::HeaderValue;
use hyper::Method;
use serde_json::{json, Value};

/// A poll of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollInfo {
    pub id: i64,
    pub options: u16,
    /// Published counts per option when the run started.
    pub baseline: Vec<u64>,
}

/// Label of option `i`: "A".."Z", then "O27", "O28", …
pub fn option_label(i: u32) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        format!("O{}", i + 1)
    }
}

/// Creates `n` open polls of `options` options.
pub async fn create(
    conn: &mut Conn,
    auth: &HeaderValue,
    n: u32,
    options: u32,
    prefix: &str,
) -> anyhow::Result<Vec<PollInfo>> {
    let labels: Vec<String> = (0..options).map(option_label).collect();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let body = json!({
            "title": format!("loadgen {prefix} poll {}", i + 1),
            "options": labels,
            "max_choices": 1,
            "visibility": "live",
            "open": true,
        });
        let (status, v) = conn
            .json(Method::POST, "/v1/polls", Some(auth), Some(&body))
            .await?;
        anyhow::ensure!(
            status == 201,
            "creating a poll answered {status}: {v} (is --operator-key right?)"
        );
        let id = v["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("the created poll has no id: {v}"))?;
        out.push(PollInfo {
            id,
            options: options as u16,
            baseline: vec![0; options as usize],
        });
    }
    Ok(out)
}

/// Reads existing polls: their option count and current counts (as the operator sees them).
pub async fn existing(
    conn: &mut Conn,
    auth: &HeaderValue,
    ids: &[i64],
) -> anyhow::Result<Vec<PollInfo>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let (status, poll) = conn
            .json(Method::GET, &format!("/v1/polls/{id}"), Some(auth), None)
            .await?;
        anyhow::ensure!(status == 200, "poll {id}: {status} {poll}");
        let options = poll["options"].as_array().map_or(0, |o| o.len()) as u16;
        anyhow::ensure!(options >= 1, "poll {id} has no options");
        if poll["state"] != "open" {
            eprintln!(
                "warning: poll {id} is {} (votes will be refused unless it opens)",
                poll["state"]
            );
        }
        let counts = results(conn, auth, id).await?.counts.unwrap_or_default();
        let mut baseline = vec![0; options as usize];
        for (b, c) in baseline.iter_mut().zip(counts) {
            *b = c;
        }
        out.push(PollInfo {
            id,
            options,
            baseline,
        });
    }
    Ok(out)
}

/// What `GET /v1/polls/{id}/results` said.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// None when the answer had no counts (hidden, or not 200).
    pub counts: Option<Vec<u64>>,
    pub version: i64,
    pub status: u16,
}

pub async fn results(conn: &mut Conn, auth: &HeaderValue, id: i64) -> anyhow::Result<Published> {
    let (status, v) = conn
        .json(
            Method::GET,
            &format!("/v1/polls/{id}/results"),
            Some(auth),
            None,
        )
        .await?;
    Ok(parse_results(status, &v))
}

pub fn parse_results(status: u16, v: &Value) -> Published {
    let counts = if status == 200 {
        v["counts"]
            .as_array()
            .map(|c| c.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
    } else {
        None
    };
    Published {
        counts,
        version: v["version"].as_i64().unwrap_or(-1),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(option_label(0), "A");
        assert_eq!(option_label(3), "D");
        assert_eq!(option_label(25), "Z");
        assert_eq!(option_label(26), "O27");
    }

    #[test]
    fn results_parsing() {
        let v: Value = serde_json::from_str(
            r#"{"poll_id":1,"version":3,"counts":[1,2],"hidden":false,"offsets":[1,2]}"#,
        )
        .unwrap();
        let p = parse_results(200, &v);
        assert_eq!(p.counts, Some(vec![1, 2]));
        assert_eq!(p.version, 3);
        let hidden: Value = serde_json::from_str(r#"{"poll_id":1,"hidden":true}"#).unwrap();
        assert_eq!(parse_results(200, &hidden).counts, None);
    }
}
