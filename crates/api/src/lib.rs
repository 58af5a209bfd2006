//! cstor-api: the Kubernetes resource types of cstor (ARCHITECTURE.md §2 decision 1, §3).
//!
//! Owns: the Rust types of cStor's custom resources with their exact groups, versions,
//! kinds, names, scopes, printer columns and OpenAPI schemas
//! (`reference/cstor-internals.md` §6); the CustomResourceDefinitions generated from them
//! ([`crds`], committed as `deploy/crds/*.yaml`); the label, annotation and finalizer names
//! every controller shares ([`names`]); the conversion between the alpha
//! `openebs.io/v1alpha1` CStorPoolCluster and `cstor.openebs.io/v1` ([`conversion`]); and the
//! validation rules the API server and the admission path apply ([`validation`],
//! [`schema`], with errors shaped as Kubernetes status causes in [`field`]); and byte
//! counts of Kubernetes quantities ([`quantity`]). The format is specified in
//! `docs/format/crds.md`.
//!
//! Invariants:
//! - Every serialised string (phases, condition types, raid group types) is spelled exactly
//!   as cStor spells it, so YAML written for cStor works verbatim.
//! - The committed `deploy/crds/*.yaml` equal [`crd_files`]; a test fails when they drift.
//! - Validation functions are pure: the same object always gives the same field errors.
//!
//! Never: I/O of any kind (no client, no files, no clock); importing a higher layer.
//! Everything here is data and pure functions so the API server, the controllers and the
//! tests share one definition.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod chap;
pub mod conversion;
mod crds;
pub mod field;
pub mod limits;
pub mod names;
pub mod quantity;
pub mod schema;
pub mod v1;
pub mod v1alpha1;
pub mod validation;

#[cfg(test)]
mod typed_schema_tests;

pub use crds::{crd_files, crds, CrdFile};
pub use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
