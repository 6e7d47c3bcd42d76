//! The Lambda Runtime API one copy talks to (version 2018-06-01): `next` hands it the
//! next task as an invocation (long-polling until there is one), `response` and `error`
//! finish it, `init/error` reports a failed init.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use tracing::{debug, warn};

use super::{Current, Inner, Invocation, MAX_RESPONSE_BYTES, Slot};

/// The header a runtime may name the error type in (when its body does not).
const ERROR_TYPE: &str = "lambda-runtime-function-error-type";
/// The most of an error message a task error keeps.
const MAX_ERROR_MESSAGE: usize = 64 * 1024;

/// A loopback listener on a port the OS picks, for one copy.
pub(super) fn bind() -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

type Ctx = (Arc<Inner>, Arc<Slot>);

/// The routes of one copy's API.
pub(super) fn router(inner: Arc<Inner>, slot: Arc<Slot>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(|| async {
            answer(
                StatusCode::NOT_FOUND,
                "InvalidRequest",
                "no such Runtime API path",
            )
        })
        .with_state((inner, slot))
}

async fn next(State((inner, slot)): State<Ctx>) -> Response {
    inner.initialized(&slot);
    // A copy that asks again without answering has dropped its invocation.
    let dropped = slot.lock().current.take();
    if let Some(current) = dropped {
        warn!(
            task = current.task,
            copy = slot.index,
            "the runtime asked for the next invocation without answering this one"
        );
        let _ = current.done.send(Err(
            "the Lambda runtime asked for its next invocation without answering this one".to_owned(),
        ));
    }
    loop {
        let queued = inner.queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if let Some((invocation, request_id)) = inner.take_for(&slot) {
            debug!(
                task = invocation.task,
                attempt = invocation.attempt,
                copy = slot.index,
                "invocation handed to the runtime"
            );
            return event(&inner, invocation, &request_id);
        }
        tokio::select! {
            () = &mut queued => {}
            () = inner.stop.cancelled() => return answer(StatusCode::GONE, "ServiceShutdown", "the worker is stopping"),
        }
    }
}

/// The `next` answer: the payload as the event, with Lambda's headers.
fn event(inner: &Inner, invocation: Invocation, request_id: &str) -> Response {
    let Invocation {
        task,
        attempt,
        payload,
        deadline_ms,
        ..
    } = invocation;
    let trace = format!(
        "Root=1-{:08x}-{task:024x};Parent={attempt:016x};Sampled=0",
        deadline_ms / 1000
    );
    let mut response = Response::new(Body::from(payload));
    let headers = response.headers_mut();
    let pairs = [
        ("lambda-runtime-aws-request-id", request_id.to_owned()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", inner.arn.clone()),
        ("lambda-runtime-trace-id", trace),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn response(State((inner, slot)): State<Ctx>, Path(id): Path<String>, body: Body) -> Response {
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await;
    let Some(current) = take(&slot, &id) else {
        return unknown(&id);
    };
    inner.finished();
    match body {
        Ok(bytes) => {
            debug!(
                task = current.task,
                copy = slot.index,
                bytes = bytes.len(),
                "invocation answered"
            );
            let _ = current.done.send(Ok(bytes));
            accepted()
        }
        Err(_) => {
            let msg = format!("the handler's response is larger than {MAX_RESPONSE_BYTES} bytes");
            let _ = current.done.send(Err(msg.clone()));
            answer(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", &msg)
        }
    }
}

async fn error(
    State((inner, slot)): State<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await;
    let Some(current) = take(&slot, &id) else {
        return unknown(&id);
    };
    inner.finished();
    let Ok(body) = body else {
        // As for a response: the task fails with the sizes, the runtime hears 413.
        let msg = format!("the handler's error body is larger than {MAX_RESPONSE_BYTES} bytes");
        let _ = current.done.send(Err(msg.clone()));
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", &msg);
    };
    let msg = describe_error(&headers, &body);
    debug!(task = current.task, copy = slot.index, error = %msg, "invocation failed");
    let _ = current.done.send(Err(msg));
    accepted()
}

async fn init_error(State((inner, slot)): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    let msg = format!(
        "the Lambda runtime failed to initialize: {}",
        describe_error(&headers, &body)
    );
    slot.lock().init_error = Some(msg.clone());
    inner.fail(msg);
    accepted()
}

/// `errorType: errorMessage` of an error body (Lambda's JSON), the type from the header
/// when the body has none, the raw body when it is not JSON.
fn describe_error(headers: &HeaderMap, body: &Bytes) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let kind = field("errorType")
        .or_else(|| {
            headers
                .get(ERROR_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Unhandled".to_owned());
    let message = field("errorMessage").unwrap_or_else(|| match &json {
        Some(_) => String::new(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    });
    let mut text = if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    };
    if text.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The slot's invocation if it is `id`.
fn take(slot: &Slot, id: &str) -> Option<Current> {
    let mut state = slot.lock();
    if state.current.as_ref().is_some_and(|c| c.request_id == id) {
        let current = state.current.take();
        drop(state);
        slot.changed.notify_one();
        current
    } else {
        None
    }
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"OK"}"#,
    )
        .into_response()
}

fn unknown(id: &str) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("no invocation {id:?} is running in this runtime"),
    )
}

fn answer(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorType": kind, "errorMessage": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_type_and_message() {
        let h = HeaderMap::new();
        let body =
            Bytes::from_static(br#"{"errorMessage":"bad n","errorType":"ValueError","stackTrace":[]}"#);
        assert_eq!(describe_error(&h, &body), "ValueError: bad n");
    }

    #[test]
    fn the_header_names_the_type_when_the_body_does_not() {
        let mut h = HeaderMap::new();
        h.insert(ERROR_TYPE, HeaderValue::from_static("Runtime.Crash"));
        assert_eq!(
            describe_error(&h, &Bytes::from_static(b"segfault")),
            "Runtime.Crash: segfault"
        );
        assert_eq!(describe_error(&HeaderMap::new(), &Bytes::new()), "Unhandled");
    }
}
