//! A test double of the Confluent Schema Registry: the part of its REST API that the clients
//! call (`schema_registry_converter`, Python's `confluent-kafka`), as Confluent documents it
//! (docs.confluent.io, "Schema Registry API Reference"). No registry server can be installed on
//! the build machines, so the registry tests run against this, on a loopback port.
//!
//! - `POST /subjects/{s}/versions` registers (`{"id"}`; the same schema again: the same id, and
//!   one id per schema across subjects), or 409 when the subject's compatibility rule (BACKWARD
//!   unless `PUT /config/{s}` said otherwise) refuses it against the latest version; 422 when it
//!   does not parse.
//! - `POST /subjects/{s}` looks a schema up (`{"subject","id","version","schema"}`, or 404 with
//!   40401 / 40403).
//! - `GET /schemas/ids/{id}`, `GET /subjects`, `GET /subjects/{s}/versions`,
//!   `GET /subjects/{s}/versions/{n|latest}`, `GET|PUT /config[/{s}]`.
//! - Anything else: 404 with an `error_code`, as the registry answers an unknown path.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
struct Registry {
    /// Schema text by id - 1 (ids start at 1).
    schemas: Vec<(String, Schema)>,
    /// Ids of each subject's versions, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
    /// Compatibility level per subject (absent: the global one).
    compatibility: BTreeMap<String, String>,
    global: String,
}

pub struct RegistryDouble {
    pub url: String,
    state: Arc<Mutex<Registry>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RegistryDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryDouble {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(Registry {
            global: "BACKWARD".into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register).get(versions))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(by_id))
            .route("/config", get(global_config))
            .route("/config/{subject}", get(subject_config).put(set_config))
            .fallback(|| async { error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    /// The ids registered under `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state
            .lock()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// The schema registered with `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        let state = self.state.lock();
        state
            .schemas
            .get(id as usize - 1)
            .map(|(text, _)| text.clone())
    }
}

type Shared = State<Arc<Mutex<Registry>>>;

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    reply(status, json!({ "error_code": code, "message": message }))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/vnd.schemaregistry.v1+json")],
        body.to_string(),
    )
        .into_response()
}

/// The schema of a request body (`{"schema": "...", "schemaType": "AVRO"}`), or the 422 answer.
fn parse_body(body: &Bytes) -> Result<(String, Schema), Box<Response>> {
    let unprocessable = |m: String| Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, 42201, &m));
    let v: Value = serde_json::from_slice(body).map_err(|e| unprocessable(e.to_string()))?;
    if let Some(t) = v.get("schemaType").and_then(Value::as_str) {
        if t != "AVRO" {
            return Err(unprocessable(format!("schema type {t} is not served here")));
        }
    }
    let text = v
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("no schema".into()))?;
    let schema =
        Schema::parse_str(text).map_err(|e| unprocessable(format!("Invalid schema: {e}")))?;
    Ok((text.to_string(), schema))
}

impl Registry {
    fn id_of(&self, schema: &Schema) -> Option<u32> {
        let form = schema.canonical_form();
        self.schemas
            .iter()
            .position(|(_, s)| s.canonical_form() == form)
            .map(|i| i as u32 + 1)
    }

    fn level(&self, subject: &str) -> &str {
        self.compatibility.get(subject).unwrap_or(&self.global)
    }

    fn registered(&self, subject: &str, index: usize) -> Value {
        let id = self.subjects[subject][index];
        json!({
            "subject": subject,
            "version": index + 1,
            "id": id,
            "schema": self.schemas[id as usize - 1].0,
        })
    }
}

async fn register(Path(subject): Path<String>, State(state): Shared, body: Bytes) -> Response {
    let (text, schema) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let mut r = state.lock();
    let existing = r.id_of(&schema);
    let versions = r.subjects.get(&subject).cloned().unwrap_or_default();
    if let Some(id) = existing.filter(|id| versions.contains(id)) {
        return reply(StatusCode::OK, json!({ "id": id }));
    }
    if let Some(&latest) = versions.last() {
        let old = &r.schemas[latest as usize - 1].1;
        let compatible = match r.level(&subject) {
            "NONE" => true,
            "FORWARD" => SchemaCompatibility::can_read(&schema, old).is_ok(),
            "FULL" => SchemaCompatibility::mutual_read(old, &schema).is_ok(),
            _ => SchemaCompatibility::can_read(old, &schema).is_ok(),
        };
        if !compatible {
            let message = format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\""
            );
            return error(StatusCode::CONFLICT, 409, &message);
        }
    }
    let id = existing.unwrap_or_else(|| {
        r.schemas.push((text, schema));
        r.schemas.len() as u32
    });
    r.subjects.entry(subject).or_default().push(id);
    reply(StatusCode::OK, json!({ "id": id }))
}

async fn lookup(Path(subject): Path<String>, State(state): Shared, body: Bytes) -> Response {
    let (_, schema) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let r = state.lock();
    let Some(versions) = r.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    match r
        .id_of(&schema)
        .and_then(|id| versions.iter().position(|&v| v == id))
    {
        Some(index) => reply(StatusCode::OK, r.registered(&subject, index)),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn by_id(Path(id): Path<u32>, State(state): Shared) -> Response {
    let r = state.lock();
    match r.schemas.get((id as usize).wrapping_sub(1)) {
        Some((text, _)) => reply(StatusCode::OK, json!({ "schema": text })),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn subjects(State(state): Shared) -> Response {
    let names: Vec<String> = state.lock().subjects.keys().cloned().collect();
    reply(StatusCode::OK, json!(names))
}

async fn versions(Path(subject): Path<String>, State(state): Shared) -> Response {
    match state.lock().subjects.get(&subject) {
        Some(v) => reply(StatusCode::OK, json!((1..=v.len()).collect::<Vec<_>>())),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        ),
    }
}

async fn version(
    Path((subject, version)): Path<(String, String)>,
    State(state): Shared,
) -> Response {
    let r = state.lock();
    let Some(count) = r.subjects.get(&subject).map(Vec::len) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    let index = match version.as_str() {
        "latest" | "-1" => count.checked_sub(1),
        n => n.parse::<usize>().ok().and_then(|n| n.checked_sub(1)),
    };
    match index.filter(|&i| i < count) {
        Some(i) => reply(StatusCode::OK, r.registered(&subject, i)),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found."),
    }
}

async fn global_config(State(state): Shared) -> Response {
    let level = state.lock().global.clone();
    reply(StatusCode::OK, json!({ "compatibilityLevel": level }))
}

async fn subject_config(Path(subject): Path<String>, State(state): Shared) -> Response {
    let level = state.lock().level(&subject).to_string();
    reply(StatusCode::OK, json!({ "compatibilityLevel": level }))
}

async fn set_config(Path(subject): Path<String>, State(state): Shared, body: Bytes) -> Response {
    let level = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("compatibility")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match level {
        Some(level) if ["BACKWARD", "FORWARD", "FULL", "NONE"].contains(&level.as_str()) => {
            state.lock().compatibility.insert(subject, level.clone());
            reply(StatusCode::OK, json!({ "compatibility": level }))
        }
        _ => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            "Invalid compatibility level",
        ),
    }
}
