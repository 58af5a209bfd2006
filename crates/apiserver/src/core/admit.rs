//! Admission of a write before it reaches the store: kind and apiVersion checks, names,
//! the namespace being present and not terminating, schema pruning and validation, and
//! the defaults the real server fills on create. Never: commits.

use super::*;

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// kube-apiserver's `IsQualifiedName` (label and annotation keys, finalizer names): an
/// optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub(super) fn qualified_name_error(s: &str) -> Option<String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_label_word(name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}

/// kube-apiserver's `IsValidLabelValue`: empty, or at most 63 characters of the name form.
pub(super) fn label_value_error(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if !is_label_word(v) {
        return Some("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    None
}

fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub(super) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// Everything except metadata and (when separate) status: what generation tracks.
pub(super) fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

pub(super) fn random_suffix() -> String {
    // Kubernetes' alphabet for generated names: no vowels (no words), no confusable 0/1/3.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

impl Core {
    pub(super) fn check_namespace(
        &self,
        inner: &Staged,
        ctx: &WriteCtx,
        name: &str,
    ) -> Result<(), ApiError> {
        if !ctx.rt.namespaced {
            return Ok(());
        }
        let ns_key = format!("core/namespaces//{}", ctx.namespace);
        match inner.objects.get(&ns_key) {
            None => Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ctx.namespace.clone(),
            }),
            Some(ns) if ns["metadata"].get("deletionTimestamp").is_some() => Err(ApiError::Forbidden {
                resource: ctx.rt.qualified(),
                name: name.into(),
                message: format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    ctx.rt.qualified(),
                    ctx.namespace
                ),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Schema pruning and validation; returns warnings for pruned fields.
    pub(super) fn validate(
        &self,
        ctx: &WriteCtx,
        obj: &mut Value,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        let mut causes = Vec::new();
        let mut warnings = Vec::new();
        if let Some(schema) = ctx.rt.schema(&ctx.version) {
            let out = schema::apply(obj, schema);
            if !out.unknown.is_empty() {
                match ctx.validation {
                    FieldValidation::Strict => {
                        let list: Vec<String> = out
                            .unknown
                            .iter()
                            .map(|u| format!("unknown field \"{u}\""))
                            .collect();
                        return Err(ApiError::BadRequest(format!(
                            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                            ctx.version,
                            list.join(", "),
                            kind = ctx.rt.kind
                        )));
                    }
                    FieldValidation::Warn => warnings
                        .extend(out.unknown.iter().map(|u| format!("unknown field \"{u}\""))),
                    FieldValidation::Ignore => {}
                }
            }
            causes.extend(out.causes);
        }
        if ctx.rt.special == Special::Crd {
            if let Err(e) = crate::registry::crd_to_type(obj) {
                causes.push(cause("FieldValueInvalid", &e.field, e.message));
            }
        }
        if let Some(labels) = obj["metadata"]["labels"].as_object() {
            for (k, v) in labels {
                let Some(v) = v.as_str() else {
                    causes.push(cause(
                        "FieldValueTypeInvalid",
                        &format!("metadata.labels.{k}"),
                        "Invalid value: must be a string".into(),
                    ));
                    continue;
                };
                if let Some(why) = qualified_name_error(k) {
                    causes.push(cause(
                        "FieldValueInvalid",
                        "metadata.labels",
                        format!("Invalid value: \"{k}\": {why}"),
                    ));
                }
                if let Some(why) = label_value_error(v) {
                    causes.push(cause(
                        "FieldValueInvalid",
                        "metadata.labels",
                        format!("Invalid value: \"{v}\": {why}"),
                    ));
                }
            }
        }
        if let Some(annotations) = obj["metadata"]["annotations"].as_object() {
            for k in annotations.keys() {
                if let Some(why) = qualified_name_error(k) {
                    causes.push(cause(
                        "FieldValueInvalid",
                        "metadata.annotations",
                        format!("Invalid value: \"{k}\": {why}"),
                    ));
                }
            }
        }
        if let Some(finalizers) = obj["metadata"]["finalizers"].as_array() {
            for (i, f) in finalizers.iter().enumerate() {
                let field = format!("metadata.finalizers[{i}]");
                match f.as_str() {
                    Some(f) => {
                        if let Some(why) = qualified_name_error(f) {
                            causes.push(cause(
                                "FieldValueInvalid",
                                &field,
                                format!("Invalid value: \"{f}\": {why}"),
                            ));
                        }
                    }
                    None => causes.push(cause(
                        "FieldValueTypeInvalid",
                        &field,
                        "Invalid value: must be a string".into(),
                    )),
                }
            }
        }
        if causes.is_empty() {
            Ok(warnings)
        } else {
            Err(invalid(&ctx.rt, name, causes))
        }
    }

    pub(super) fn check_kind(&self, ctx: &WriteCtx, obj: &Value) -> Result<(), ApiError> {
        if let Some(k) = obj["kind"].as_str() {
            if !k.is_empty() && k != ctx.rt.kind {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    ctx.rt.kind
                )));
            }
        }
        if let Some(av) = obj["apiVersion"].as_str() {
            let want = ctx.rt.api_version(&ctx.version);
            if !av.is_empty()
                && av != want
                && !ctx.rt.versions.iter().any(|v| ctx.rt.api_version(v) == av)
            {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want})"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn check_name(&self, ctx: &WriteCtx, name: &str) -> Result<(), ApiError> {
        let ok = if ctx.rt.special == Special::Namespace {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if ok {
            return Ok(());
        }
        let what = if ctx.rt.special == Special::Namespace {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        };
        Err(invalid(
            &ctx.rt,
            name,
            vec![cause(
                "FieldValueInvalid",
                "metadata.name",
                format!("Invalid value: \"{name}\": {what}"),
            )],
        ))
    }

    pub(super) fn prepare_create(
        &self,
        ctx: &WriteCtx,
        obj: &mut Value,
        warnings: &mut Vec<String>,
    ) {
        match ctx.rt.special {
            Special::Namespace => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                    obj["metadata"]["name"].clone();
            }
            Special::Pvc | Special::Pv => {
                obj["status"] = json!({"phase": "Pending"});
                if obj["spec"].is_object() && obj["spec"]["volumeMode"].is_null() {
                    obj["spec"]["volumeMode"] = json!("Filesystem");
                }
            }
            Special::Crd => {
                obj["status"] = crd_status(obj);
                let finalizers = obj["metadata"]["finalizers"].as_array_mut();
                match finalizers {
                    Some(f) if f.iter().any(|x| x == CRD_CLEANUP_FINALIZER) => {}
                    Some(f) => f.push(json!(CRD_CLEANUP_FINALIZER)),
                    None => obj["metadata"]["finalizers"] = json!([CRD_CLEANUP_FINALIZER]),
                }
            }
            Special::Workload => warnings.push(format!(
                "{} is stored only: no workload runs on the embedded cstor control plane",
                ctx.rt.kind
            )),
            Special::Secret if obj["type"].as_str().is_none_or(str::is_empty) => {
                obj["type"] = json!("Opaque");
            }
            Special::EventsV1 if obj["eventTime"].is_null() => {
                obj["eventTime"] = json!(time::now_rfc3339_micro());
            }
            _ => {}
        }
    }
}

/// Which admission webhooks to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hooks {
    Mutating,
    Validating,
}

impl Core {
    /// Calls the matching admission webhooks of one kind (crate::webhook) in name order:
    /// mutating ones patch `object` in turn, validating ones may only refuse. Webhooks
    /// never see writes to the webhook configurations themselves.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn call_webhooks(
        &self,
        hooks: Hooks,
        ctx: &WriteCtx,
        operation: &'static str,
        part: Part,
        name: &str,
        object: Option<&mut Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if ctx.rt.group == "admissionregistration.k8s.io" {
            return Ok(());
        }
        let prefix = match hooks {
            Hooks::Mutating => crate::webhook::MUTATING_PREFIX,
            Hooks::Validating => crate::webhook::VALIDATING_PREFIX,
        };
        let (configs, ns_labels) = {
            let inner = self.inner.read();
            let configs: Vec<Arc<Value>> = inner
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            if configs.is_empty() {
                return Ok(());
            }
            let ns_labels = if ctx.rt.special == Special::Namespace {
                None
            } else {
                inner
                    .objects
                    .get(&format!("core/namespaces//{}", ctx.namespace))
                    .map(|ns| ns["metadata"]["labels"].clone())
            };
            (configs, ns_labels)
        };
        let mut object = object;
        for config in &configs {
            for hook in config["webhooks"].as_array().into_iter().flatten() {
                let current = object.as_deref().cloned();
                let ns_labels = match ctx.rt.special {
                    Special::Namespace => current
                        .as_ref()
                        .or(old)
                        .map(|o| o["metadata"]["labels"].clone()),
                    _ => ns_labels.clone(),
                };
                let attrs = crate::webhook::Attributes {
                    operation,
                    group: &ctx.rt.group,
                    version: &ctx.version,
                    kind: &ctx.rt.kind,
                    resource: &ctx.rt.plural,
                    subresource: if part == Part::Status { "status" } else { "" },
                    namespaced: ctx.rt.namespaced,
                    namespace: &ctx.namespace,
                    name,
                    object: current.as_ref(),
                    old_object: old,
                    namespace_labels: ns_labels,
                    user: "system:admin",
                    dry_run: ctx.dry_run,
                };
                if !crate::webhook::hook_matches(hook, &attrs) {
                    continue;
                }
                let at = {
                    let inner = self.inner.read();
                    crate::webhook::endpoint(hook, &StoredServices(&inner.objects))
                };
                match at.and_then(|at| crate::webhook::call(hook, &at, &attrs)) {
                    Ok(crate::webhook::Verdict::Denied(e)) => return Err(e),
                    Ok(crate::webhook::Verdict::Allowed { patch }) => {
                        if let (Hooks::Mutating, Some(p), Some(o)) =
                            (hooks, patch, object.as_deref_mut())
                        {
                            crate::patch::json(o, &p).map_err(|e| {
                                crate::webhook::call_failed(
                                    hook,
                                    &format!("applying its patch: {e}"),
                                )
                            })?;
                        }
                    }
                    Err(why) if crate::webhook::ignores_failure(hook) => {
                        tracing::warn!(webhook = hook["name"].as_str().unwrap_or(""), %why, "admission webhook failed; failurePolicy Ignore");
                    }
                    Err(why) => return Err(crate::webhook::call_failed(hook, &why)),
                }
            }
        }
        Ok(())
    }
}

/// Service references of webhooks resolve through the stored objects.
struct StoredServices<'a>(&'a BTreeMap<String, Arc<Value>>);

impl crate::webhook::Services for StoredServices<'_> {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.0
            .get(&format!("core/services/{namespace}/{name}"))
            .cloned()
    }
    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.0
            .get(&format!("core/endpoints/{namespace}/{name}"))
            .cloned()
    }
    fn endpoint_slices(&self, namespace: &str, name: &str) -> Vec<Arc<Value>> {
        let prefix = format!("discovery.k8s.io/endpointslices/{namespace}/");
        self.0
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, v)| {
                v["metadata"]["labels"]["kubernetes.io/service-name"].as_str() == Some(name)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
}
