//! What the API answers, and how that becomes HTTP.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::StatusCode;
use serde::Serialize;

/// An answer to one request.
///
/// The VMM answers with the first three variants; the others are produced by
/// the server itself (routing, size and time limits).
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// 204, no body: a PUT/PATCH/action that succeeded.
    NoContent,
    /// 200 with this JSON body: a GET.
    Json(serde_json::Value),
    /// 400 with `{"fault_message": ...}`: the request was refused.
    BadRequest(String),
    /// 404: no such path.
    NotFound(String),
    /// 405 with an `Allow` header listing `allowed`.
    MethodNotAllowed {
        /// The methods the path serves.
        allowed: &'static [&'static str],
        /// The fault message.
        message: String,
    },
    /// 408: the request body did not arrive in time.
    RequestTimeout(String),
    /// 413: the request body is larger than the server takes.
    PayloadTooLarge(String),
    /// 504: the VMM did not answer in time.
    VmmTimeout(String),
}

impl Response {
    /// 200 with `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_value(value) {
            Ok(v) => Response::Json(v),
            // Only maps with non-string keys fail; none of the model does.
            Err(e) => Response::BadRequest(format!("cannot serialize the answer: {e}")),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Response::NoContent => StatusCode::NO_CONTENT,
            Response::Json(_) => StatusCode::OK,
            Response::BadRequest(_) => StatusCode::BAD_REQUEST,
            Response::NotFound(_) => StatusCode::NOT_FOUND,
            Response::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Response::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Response::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Response::VmmTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The fault message of an error answer.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Response::NoContent | Response::Json(_) => None,
            Response::BadRequest(m)
            | Response::NotFound(m)
            | Response::MethodNotAllowed { message: m, .. }
            | Response::RequestTimeout(m)
            | Response::PayloadTooLarge(m)
            | Response::VmmTimeout(m) => Some(m),
        }
    }

    /// The HTTP response: 204 without a body, JSON with a Content-Type and
    /// length otherwise.
    pub(crate) fn into_http(self) -> hyper::Response<Full<Bytes>> {
        let status = self.status();
        let allow = match &self {
            Response::MethodNotAllowed { allowed, .. } => Some(allowed.join(", ")),
            _ => None,
        };
        let body = match self {
            Response::NoContent => None,
            Response::Json(value) => Some(value.to_string()),
            error => {
                let message = error.fault_message().unwrap_or_default();
                Some(serde_json::json!({ "fault_message": message }).to_string())
            }
        };
        let mut response = hyper::Response::new(match body {
            Some(body) => Full::new(Bytes::from(body)),
            None => Full::default(),
        });
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if status != StatusCode::NO_CONTENT {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(ALLOW, allow);
        }
        response
    }
}
