//! The API server's one error type and its one mapping to a Kubernetes `Status` object
//! (the HTTP edge of style.md §4): 400 BadRequest, 401 Unauthorized, 403 Forbidden,
//! 404 NotFound, 405 MethodNotAllowed, 409 AlreadyExists/Conflict, 410 Expired,
//! 413 RequestEntityTooLarge, 429 TooManyRequests, 415 UnsupportedMediaType, 406 NotAcceptable, 422 Invalid, 500 InternalError.

use serde_json::{json, Value};

/// One invalid field, as a `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// Dotted path such as `spec.pools[0].dataRaidGroupType`.
    pub field: String,
    /// Human message for the field, as the real server words it.
    pub message: String,
}

/// Errors a request can end in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed request (body, query, selector).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// Refused by policy (for example creating in a terminating namespace).
    #[error("{message}")]
    Forbidden {
        /// Resource (plural.group) for `details.kind`.
        resource: String,
        /// Object name.
        name: String,
        /// Full message.
        message: String,
    },
    /// Object, namespace or resource type missing.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// `plural.group` (or plural for the core group).
        resource: String,
        /// Object name.
        name: String,
    },
    /// Unknown path (no such resource type).
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// Verb not served on the path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// Create of a name that exists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// `plural.group`.
        resource: String,
        /// Object name.
        name: String,
    },
    /// Stale resourceVersion, or a server-side-apply field conflict.
    #[error("{message}")]
    Conflict {
        /// `plural.group`.
        resource: String,
        /// Object name.
        name: String,
        /// Full message.
        message: String,
        /// Conflicting fields (server-side apply).
        causes: Vec<FieldCause>,
    },
    /// Watch from a resourceVersion no longer in history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// Asked-for resourceVersion.
        requested: u64,
        /// Oldest resourceVersion a watch can still start from.
        oldest: u64,
    },
    /// Body larger than the limit.
    /// A continue token (or an Exact list) whose resourceVersion has been compacted.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")]
    ContinueExpired,
    /// A list or get asked for a resourceVersion newer than the server's.
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// Asked for.
        requested: u64,
        /// The server's current resourceVersion.
        current: u64,
    },
    /// A bound on concurrent work (watches) is reached; the client retries later.
    #[error("Too many requests: {0}")]
    TooManyRequests(String),
    #[error("the request body is too large")]
    TooLarge,
    /// Patch type not allowed for this resource.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    /// No media type in Accept can be served.
    #[error("only the following media types are accepted: {0}")]
    NotAcceptable(String),
    /// Schema or metadata validation failed.
    #[error("{}", invalid_text(.kind, .group, .name, .causes))]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// API group (empty for core).
        group: String,
        /// Object name.
        name: String,
        /// One cause per invalid field.
        causes: Vec<FieldCause>,
    },
    /// ResourceQuota would be exceeded.
    #[error("{message}")]
    QuotaExceeded {
        /// `plural.group`.
        resource: String,
        /// Object name.
        name: String,
        /// Full message.
        message: String,
    },
    /// The store failed; the change was not made.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The server failed for a reason of its own (a group commit that failed this write).
    #[error("{0}")]
    Internal(String),
    /// An admission webhook denied the request, or could not be called under
    /// `failurePolicy: Fail` (message as kube-apiserver words it).
    #[error("{message}")]
    Admission {
        /// HTTP status (>= 400).
        code: u16,
        /// Full message.
        message: String,
    },
}

fn invalid_text(kind: &str, group: &str, name: &str, causes: &[FieldCause]) -> String {
    if group.is_empty() {
        format!("{kind} \"{name}\" is invalid: {}", causes_text(causes))
    } else {
        format!(
            "{kind}.{group} \"{name}\" is invalid: {}",
            causes_text(causes)
        )
    }
}

fn causes_text(causes: &[FieldCause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    /// HTTP status code of the error.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } | ApiError::QuotaExceeded { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Gone { .. } | ApiError::ContinueExpired => 410,
            ApiError::TooLargeResourceVersion { .. } => 504,
            ApiError::TooLarge => 413,
            ApiError::TooManyRequests(_) => 429,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Invalid { .. } => 422,
            ApiError::Store(_) | ApiError::Internal(_) => 500,
            ApiError::Admission { code, .. } => *code,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } | ApiError::QuotaExceeded { .. } => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Gone { .. } | ApiError::ContinueExpired => "Expired",
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Store(_) | ApiError::Internal(_) => "InternalError",
            ApiError::Admission { code, .. } => match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                500.. => "InternalError",
                _ => "BadRequest",
            },
        }
    }

    /// The `Status` object the real server sends for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Forbidden { resource, name, .. }
            | ApiError::QuotaExceeded { resource, name, .. } => Some(details(resource, name, &[])),
            ApiError::Conflict {
                resource,
                name,
                causes,
                ..
            } => Some(details(resource, name, causes)),
            ApiError::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let mut d = json!({"name": name, "kind": kind, "causes": causes_json(causes)});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

fn details(resource: &str, name: &str, causes: &[FieldCause]) -> Value {
    let (kind, group) = match resource.split_once('.') {
        Some((k, g)) => (k, g),
        None => (resource, ""),
    };
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    if !causes.is_empty() {
        d["causes"] = causes_json(causes);
    }
    d
}

fn causes_json(causes: &[FieldCause]) -> Value {
    Value::Array(
        causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect(),
    )
}
