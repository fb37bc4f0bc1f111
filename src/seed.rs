//! The seed API adapter (placeholder while it is written).
use crate::serve::AppState;
use axum::Router;

pub fn router(_state: AppState) -> Router {
    Router::new()
}
