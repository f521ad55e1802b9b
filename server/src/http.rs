//! The HTTP server: health, and the messages feed as the original HTTP service served it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `200 ok` (`text/plain`) |
//! | `GET /messages?after=T&limit=N` | `200` `application/vnd.messageUpdates.v1+json` `{"total": n, "messages": [...]}` (`messages` omitted when empty); `400` (`text/plain` reason) for a bad `after` or `limit` |
//! | `GET /messages/{id}` | `200` the caller's entry (`application/json`), `404` otherwise |
//!
//! The feed routes exist only when the messages feed is served; both need
//! `Authorization: Bearer <jwt>` (`401` without a valid one), checked before the query.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth;
use crate::messages::{self, Feed, MAX_LIMIT};

/// The content type of a page of feed changes.
pub const MESSAGE_UPDATES: &str = "application/vnd.messageUpdates.v1+json";

/// The routes, with the feed's when it is served.
pub(crate) fn router(feed: Option<Feed>) -> Router {
    let router = Router::new().route("/health", get(health));
    match feed {
        Some(feed) => router.merge(
            Router::new()
                .route("/messages", get(changes))
                .route("/messages/{id}", get(message))
                .with_state(feed),
        ),
        None => router,
    }
}

async fn health() -> Response {
    text(StatusCode::OK, "ok")
}

async fn changes(
    State(feed): State<Feed>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let user = match user(&headers, &feed) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    let Ok(Query(query)) = query else {
        return text(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let after = match query.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(after)) => after,
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "after must be a non-negative integer"),
    };
    let limit = match query.get("limit").map(|l| l.parse::<u64>()) {
        None => messages::DEFAULT_LIMIT,
        Some(Ok(limit)) if (1..=MAX_LIMIT as u64).contains(&limit) => limit as usize,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("limit must be an integer between 1 and {MAX_LIMIT}"),
            );
        }
    };
    let page = feed.changes(&user, after, limit);
    let items: Vec<String> = page.entries.iter().filter_map(messages::entry_json).collect();
    // Written by hand to keep the original's field order (`total` first) and to omit
    // `messages` when empty, as the original did.
    let body = if items.is_empty() {
        r#"{"total":0}"#.to_owned()
    } else {
        format!(r#"{{"total":{},"messages":[{}]}}"#, items.len(), items.join(","))
    };
    with_type(StatusCode::OK, MESSAGE_UPDATES, body)
}

async fn message(State(feed): State<Feed>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let user = match user(&headers, &feed) {
        Ok(user) => user,
        Err(refused) => return refused.into_response(),
    };
    match feed.message_json(&user, &id) {
        Some(json) => with_type(StatusCode::OK, "application/json", json),
        // Another user's message is as absent as an unknown one: existence is not disclosed.
        None => text(StatusCode::NOT_FOUND, "no such message"),
    }
}

/// The caller, or why the request is unauthorised.
fn user(headers: &HeaderMap, feed: &Feed) -> Result<String, Unauthorized> {
    let header = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    auth::bearer_user(header, &feed.jwt_secret).map_err(|error| Unauthorized(error.to_string()))
}

/// A `401` with the reason, asking for a bearer token.
struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut response = text(StatusCode::UNAUTHORIZED, &self.0);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}
