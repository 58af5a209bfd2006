//! Field errors: what is wrong where, in the shape of Kubernetes' `StatusCause`, so the
//! API server turns a list of them into a 422 `Status` exactly like kube-apiserver does
//! (`reason` = cause type, `field` = path, `message` = the sentence kubectl prints).

use std::fmt;

/// Path of a field inside an object: `spec.pools[0].dataRaidGroups[1].blockDevices`.
/// Map entries are written `nodeSelector[kubernetes.io/hostname]`, as Kubernetes does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(String);

impl FieldPath {
    /// The whole object.
    pub fn root() -> FieldPath {
        FieldPath(String::new())
    }

    /// A path from its dotted spelling (`"spec.pools"`).
    pub fn new(path: &str) -> FieldPath {
        FieldPath(path.to_owned())
    }

    /// The child field `name`.
    pub fn child(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_owned())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// Element `index` of this list.
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// Entry `key` of this map.
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{key}]", self.0))
    }

    /// The dotted spelling; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with a field; one variant per Kubernetes `field.ErrorType`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// A required field is missing or empty.
    Required {
        /// Why it is required, if more than the schema says.
        detail: String,
    },
    /// The value is not one of a fixed set.
    NotSupported {
        /// The value given, rendered as JSON.
        value: String,
        /// The values allowed, as written in YAML.
        supported: Vec<String>,
    },
    /// The value is malformed or breaks a rule.
    Invalid {
        /// The value given, rendered as JSON.
        value: String,
        /// Which rule it breaks.
        detail: String,
    },
    /// The value has the wrong JSON type.
    TypeInvalid {
        /// The JSON type given (`string`, `integer`, ...), as kube-apiserver reports it.
        value: String,
        /// The JSON type expected (`string`, `integer`, ...).
        expected: String,
    },
    /// The value already appears elsewhere where it must be unique.
    Duplicate {
        /// The repeated value, rendered as JSON.
        value: String,
    },
    /// A list or map has more entries than allowed.
    TooMany {
        /// Entries given.
        count: usize,
        /// Entries allowed.
        max: usize,
    },
    /// The field names an object that does not exist.
    NotFound {
        /// The value given, rendered as JSON.
        value: String,
    },
    /// The change is not allowed (e.g. an immutable field changed).
    Forbidden {
        /// Why.
        detail: String,
    },
    /// The field is not declared in the schema (kube-apiserver prunes such fields, or
    /// rejects them under `fieldValidation=Strict`).
    Unknown,
}

/// One field error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Where.
    pub field: FieldPath,
    /// What.
    pub kind: FieldErrorKind,
}

impl FieldError {
    /// A required field is missing.
    pub fn required(field: FieldPath, detail: impl Into<String>) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::Required {
                detail: detail.into(),
            },
        }
    }

    /// The value breaks a rule.
    pub fn invalid(
        field: FieldPath,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::Invalid {
                value: value.into(),
                detail: detail.into(),
            },
        }
    }

    /// The value is repeated.
    pub fn duplicate(field: FieldPath, value: impl Into<String>) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::Duplicate {
                value: value.into(),
            },
        }
    }

    /// Too many entries.
    pub fn too_many(field: FieldPath, count: usize, max: usize) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::TooMany { count, max },
        }
    }

    /// The named object does not exist.
    pub fn not_found(field: FieldPath, value: impl Into<String>) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::NotFound {
                value: value.into(),
            },
        }
    }

    /// The change is not allowed.
    pub fn forbidden(field: FieldPath, detail: impl Into<String>) -> FieldError {
        FieldError {
            field,
            kind: FieldErrorKind::Forbidden {
                detail: detail.into(),
            },
        }
    }

    /// The `reason` of the Kubernetes `StatusCause` (`FieldValueRequired`, ...).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required { .. } => "FieldValueRequired",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::TypeInvalid { .. } => "FieldValueTypeInvalid",
            FieldErrorKind::Duplicate { .. } => "FieldValueDuplicate",
            FieldErrorKind::TooMany { .. } => "FieldValueTooMany",
            FieldErrorKind::NotFound { .. } => "FieldValueNotFound",
            FieldErrorKind::Forbidden { .. } => "FieldValueForbidden",
            FieldErrorKind::Unknown => "FieldValueUnknown",
        }
    }

    /// The `message` of the Kubernetes `StatusCause`, worded as kube-apiserver words it
    /// (`Unsupported value: "foo": supported values: "stripe", "mirror"`).
    pub fn message(&self) -> String {
        match &self.kind {
            FieldErrorKind::Required { detail } if detail.is_empty() => "Required value".into(),
            FieldErrorKind::Required { detail } => format!("Required value: {detail}"),
            FieldErrorKind::NotSupported { value, supported } => {
                let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    list.join(", ")
                )
            }
            FieldErrorKind::Invalid { value, detail } => {
                format!("Invalid value: {value}: {detail}")
            }
            FieldErrorKind::TypeInvalid { value, expected } => format!(
                "Invalid value: {value:?}: {} in body must be of type {expected}: {value:?}",
                self.field
            ),
            FieldErrorKind::Duplicate { value } => format!("Duplicate value: {value}"),
            FieldErrorKind::TooMany { count, max } => {
                format!("Too many: {count}: must have at most {max} items")
            }
            FieldErrorKind::NotFound { value } => format!("Not found: {value}"),
            FieldErrorKind::Forbidden { detail } => format!("Forbidden: {detail}"),
            FieldErrorKind::Unknown => format!("unknown field {:?}", self.field.as_str()),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.as_str().is_empty() || matches!(self.kind, FieldErrorKind::Unknown) {
            f.write_str(&self.message())
        } else {
            write!(f, "{}: {}", self.field, self.message())
        }
    }
}

/// The `message` of a 422 `Status`, as kube-apiserver writes it:
/// `CStorPoolCluster.cstor.openebs.io "pool" is invalid: spec.pools: Required value`, with
/// several errors in brackets separated by ", ".
pub fn invalid_message(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let causes: Vec<String> = errors.iter().map(ToString::to_string).collect();
    match causes.as_slice() {
        [one] => format!("{qualified} {name:?} is invalid: {one}"),
        many => format!("{qualified} {name:?} is invalid: [{}]", many.join(", ")),
    }
}

/// A JSON value as field error messages show it: strings quoted, everything else as JSON.
pub fn render_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}
