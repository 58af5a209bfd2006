//! Writes: create, update (PUT), patch (JSON, merge, strategic, apply) and delete.
//! Every write funnels into `Core::commit`; an update without a client resourceVersion
//! precondition that loses a race is rebuilt from the newer object (GuaranteedUpdate).

use super::*;

impl Core {
    /// Creates an object.
    pub(crate) fn create(&self, ctx: &WriteCtx, obj: Value) -> Result<Written, ApiError> {
        self.create_with(ctx, obj, None)
    }

    /// Creates an object; `apply_managed` carries the managedFields of a server-side
    /// apply that creates it (otherwise the creator owns every field as an Update).
    pub(super) fn create_with(
        &self,
        ctx: &WriteCtx,
        mut obj: Value,
        apply_managed: Option<Value>,
    ) -> Result<Written, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "Object 'Kind' is missing in request body".into(),
            ));
        }
        self.check_kind(ctx, &obj)?;
        crate::builtin::fold_string_data(&ctx.rt, &ctx.version, &mut obj)?;
        obj["apiVersion"] = json!(ctx.rt.api_version(&ctx.version));
        obj["kind"] = json!(ctx.rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let body_ns = meta_str(&obj, "namespace").unwrap_or("").to_string();
        if ctx.rt.namespaced {
            if !body_ns.is_empty() && body_ns != ctx.namespace {
                return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()));
            }
            obj["metadata"]["namespace"] = json!(ctx.namespace);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}{}", random_suffix()),
            _ => {
                return Err(invalid(
                    &ctx.rt,
                    "",
                    vec![cause(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        obj["metadata"]["name"] = json!(name);
        self.check_name(ctx, &name)?;
        if ctx.rt.has_status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        let main = Part::Main { has_status: false };
        self.call_webhooks(
            Hooks::Mutating,
            ctx,
            "CREATE",
            main,
            &name,
            Some(&mut obj),
            None,
        )?;
        let mut warnings = self.validate(ctx, &mut obj, &name)?;
        let causes = crate::builtin::validate(&ctx.rt, &obj, None);
        if !causes.is_empty() {
            return Err(invalid(&ctx.rt, &name, causes));
        }
        self.call_webhooks(
            Hooks::Validating,
            ctx,
            "CREATE",
            main,
            &name,
            Some(&mut obj),
            None,
        )?;
        self.prepare_create(ctx, &mut obj, &mut warnings);
        let mut stored = to_internal(&ctx.rt, &obj)?;
        {
            let m = stored["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(time::now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("selfLink");
        }
        match apply_managed {
            Some(Value::Array(mut entries)) => {
                for e in &mut entries {
                    e["apiVersion"] = json!(ctx.rt.api_version(&ctx.version));
                }
                stored["metadata"]["managedFields"] = Value::Array(entries);
            }
            _ => fields::track_update(
                None,
                &mut stored,
                &ctx.manager,
                Part::Main { has_status: false },
                ctx.rt.stored_lists(),
            ),
        }
        let key = ctx.rt.key(&ctx.namespace_for_key(), &name);
        let inner = self.writer();
        self.check_namespace(&inner, ctx, &name)?;
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: ctx.rt.qualified(),
                name,
            });
        }
        let mut pending: Pending = Vec::new();
        if ctx.rt.special == Special::Pvc {
            self.charge_quota(&inner, ctx, &stored, &mut pending)?;
        }
        if ctx.dry_run {
            return Ok(Written {
                object: to_external(&ctx.rt, &ctx.version, &stored),
                warnings,
                created: true,
            });
        }
        pending.insert(0, (EventType::Added, key, stored));
        let changes = self.commit(inner, pending)?;
        Ok(Written {
            object: to_external(&ctx.rt, &ctx.version, &changes[0].object),
            warnings,
            created: true,
        })
    }

    /// Replaces an object (PUT), or its status with `Part::Status`.
    pub(crate) fn update(
        &self,
        ctx: &WriteCtx,
        name: &str,
        body: Value,
        part: Part,
    ) -> Result<Written, ApiError> {
        self.update_with(ctx, name, part, |_| Ok(body.clone()), Source::Put)
    }

    /// Patches an object or its status.
    pub(crate) fn patch(
        &self,
        ctx: &WriteCtx,
        name: &str,
        kind: PatchKind,
        patch: Value,
        part: Part,
    ) -> Result<Written, ApiError> {
        if let PatchKind::Apply { force } = kind {
            return self.server_side_apply(ctx, name, patch, part, force);
        }
        if kind == PatchKind::Strategic && ctx.rt.is_crd {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
            ));
        }
        self.update_with(
            ctx,
            name,
            part,
            |current| {
                let mut target = current.clone();
                match kind {
                    PatchKind::Json => crate::patch::json(&mut target, &patch),
                    PatchKind::Merge => crate::patch::merge(&mut target, &patch),
                    PatchKind::Strategic => crate::patch::strategic(&mut target, &patch),
                    PatchKind::Apply { .. } => Ok(()),
                }
                .map_err(|e| match e {
                    ApiError::Invalid { causes, .. } => invalid(&ctx.rt, name, causes),
                    other => other,
                })?;
                Ok(target)
            },
            Source::Patch,
        )
    }

    pub(super) fn server_side_apply(
        &self,
        ctx: &WriteCtx,
        name: &str,
        applied: Value,
        part: Part,
        force: bool,
    ) -> Result<Written, ApiError> {
        if !applied.is_object() {
            return Err(ApiError::BadRequest(
                "apply patch must be a JSON object".into(),
            ));
        }
        self.check_kind(ctx, &applied)?;
        if let Some(n) = meta_str(&applied, "name") {
            if n != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let key = ctx.rt.key(&ctx.namespace_for_key(), name);
        let exists = self.writer().objects.contains_key(&key);
        match exists {
            false => {
                if part == Part::Status {
                    return Err(not_found(&ctx.rt, name));
                }
                let resource = ctx.rt.qualified();
                let mut obj =
                    fields::apply(None, &applied, ctx.applier(force, part, &resource, name))?;
                let managed = obj["metadata"]["managedFields"].clone();
                obj["metadata"]["name"] = json!(name);
                let mut w = self.create_with(ctx, obj, Some(managed))?;
                w.created = true;
                Ok(w)
            }
            true => {
                let resource = ctx.rt.qualified();
                self.update_with(
                    ctx,
                    name,
                    part,
                    |current| {
                        let mut merged = fields::apply(
                            Some(current),
                            &applied,
                            ctx.applier(force, part, &resource, name),
                        )?;
                        merged["metadata"]["resourceVersion"] =
                            current["metadata"]["resourceVersion"].clone();
                        Ok(merged)
                    },
                    Source::Apply,
                )
            }
        }
    }

    /// The shared update path: `make` builds the new external object from the current
    /// one; preconditions, status/spec separation, generation, managed fields, finalizer
    /// completion and the durable commit happen here.
    pub(super) fn update_with(
        &self,
        ctx: &WriteCtx,
        name: &str,
        part: Part,
        make: impl Fn(&Value) -> Result<Value, ApiError>,
        source: Source,
    ) -> Result<Written, ApiError> {
        // A write without a resourceVersion precondition that races another writer is
        // rebuilt from the newer object, like kube-apiserver's GuaranteedUpdate. The last
        // attempt builds under the lock, so it cannot lose again: such writes never see
        // a 409 however many writers contend.
        for _ in 0..limits::UPDATE_RETRIES_MAX {
            match self.update_once(ctx, name, part, &make, source, false)? {
                Attempt::Done(w) => return Ok(w),
                Attempt::Raced => {}
            }
        }
        match self.update_once(ctx, name, part, &make, source, true)? {
            Attempt::Done(w) => Ok(w),
            Attempt::Raced => unreachable!("an update built under the lock cannot race"),
        }
    }

    /// One attempt of an update; with `hold` the lock is held from reading the current
    /// object to the commit.
    pub(super) fn update_once(
        &self,
        ctx: &WriteCtx,
        name: &str,
        part: Part,
        make: &impl Fn(&Value) -> Result<Value, ApiError>,
        source: Source,
        hold: bool,
    ) -> Result<Attempt, ApiError> {
        let rt = &ctx.rt;
        let managed_by_apply = source == Source::Apply;
        let is_put = source == Source::Put;
        let key = rt.key(&ctx.namespace_for_key(), name);
        let mut held = hold.then(|| self.writer());
        let current_stored = match &held {
            Some(g) => g.objects.get(&key).cloned(),
            None => self.writer().objects.get(&key).cloned(),
        }
        .ok_or_else(|| not_found(rt, name))?;
        let current = to_external(rt, &ctx.version, &current_stored);
        let mut body = make(&current)?;
        if !body.is_object() {
            return Err(ApiError::BadRequest("body must be a JSON object".into()));
        }
        crate::builtin::fold_string_data(rt, &ctx.version, &mut body)?;
        self.call_webhooks(
            Hooks::Mutating,
            ctx,
            "UPDATE",
            part,
            name,
            Some(&mut body),
            Some(&current),
        )?;
        self.check_kind(ctx, &body)?;
        if let Some(n) = meta_str(&body, "name") {
            if n != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        // A PUT's resourceVersion is the client's precondition. A patch starts from the
        // current object, so its result carries the current resourceVersion unless the
        // patch itself set one: only a resourceVersion the patch wrote is a precondition
        // (kube-apiserver's patcher behaves the same), otherwise the patch is retried.
        let precondition = meta_str(&body, "resourceVersion")
            .filter(|s| !s.is_empty())
            .filter(|s| is_put || Some(*s) != meta_str(&current, "resourceVersion"))
            .map(str::to_string);
        body["apiVersion"] = json!(rt.api_version(&ctx.version));
        body["kind"] = json!(rt.kind);
        let mut warnings = self.validate(ctx, &mut body, name)?;
        if matches!(rt.special, Special::Workload) {
            warnings.push(format!(
                "{} is stored only: no workload runs on the embedded cstor control plane",
                rt.kind
            ));
        }
        // Assemble the new object from the parts this write may change.
        let mut new = match part {
            Part::Status => {
                let mut n = current.clone();
                n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                if n["status"].is_null() {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
                n
            }
            Part::Main { has_status } => {
                let mut n = body.clone();
                if has_status {
                    match current.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => {
                            if let Some(m) = n.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                if !n["metadata"].is_object() {
                    n["metadata"] = json!({});
                }
                for f in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match current["metadata"].get(f) {
                        Some(v) => n["metadata"][f] = v.clone(),
                        None => {
                            if let Some(m) = n["metadata"].as_object_mut() {
                                m.remove(f);
                            }
                        }
                    }
                }
                if !managed_by_apply {
                    n["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
                }
                n
            }
        };
        if current["metadata"].get("deletionTimestamp").is_some() {
            let had = current["metadata"]["finalizers"].as_array();
            let added: Vec<&Value> = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !had.is_some_and(|h| h.contains(f)))
                .collect();
            if !added.is_empty() {
                let list: Vec<String> = added.iter().map(|f| f.to_string()).collect();
                return Err(invalid(
                    rt,
                    name,
                    vec![cause(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            list.join(", ")
                        ),
                    )],
                ));
            }
        }
        if part != Part::Status {
            let causes = crate::builtin::validate(rt, &new, Some(&current));
            if !causes.is_empty() {
                return Err(invalid(rt, name, causes));
            }
        }
        if rt.special == Special::Crd && part != Part::Status {
            new["status"] = crd_status(&new);
        }
        self.call_webhooks(
            Hooks::Validating,
            ctx,
            "UPDATE",
            part,
            name,
            Some(&mut new),
            Some(&current),
        )?;
        if spec_part(&new) != spec_part(&current) && part != Part::Status {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let mut new_stored = to_internal(rt, &new)?;
        if !managed_by_apply {
            let old_stored_ext = to_internal(rt, &current)?;
            fields::track_update(
                Some(&old_stored_ext),
                &mut new_stored,
                &ctx.manager,
                part,
                rt.stored_lists(),
            );
        }
        if new_stored["metadata"]["managedFields"].is_null() {
            if let Some(m) = new_stored["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        let inner = match held.take() {
            Some(g) => g,
            None => self.writer(),
        };
        let live = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        let live_rv = meta_str(&live, "resourceVersion").unwrap_or("").to_string();
        match &precondition {
            Some(p) if *p != live_rv => return Err(conflict(rt, name)),
            // The object moved between building and committing: the caller retries.
            None if !Arc::ptr_eq(&live, &current_stored) => return Ok(Attempt::Raced),
            _ => {}
        }
        new_stored["metadata"]["resourceVersion"] = json!(live_rv);
        let finishing = new_stored["metadata"].get("deletionTimestamp").is_some()
            && new_stored["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        let mut quota_pending: Pending = Vec::new();
        let grows = matches!(
            (crate::builtin::pvc_request(&new_stored), crate::builtin::pvc_request(&live)),
            (Some(n), Some(o)) if n > o
        );
        if rt.special == Special::Pvc && part != Part::Status && grows {
            let sc = new_stored["spec"]["storageClassName"]
                .as_str()
                .unwrap_or("");
            let expandable = inner
                .objects
                .get(&format!("storage.k8s.io/storageclasses//{sc}"))
                .is_some_and(|sc| sc["allowVolumeExpansion"].as_bool() == Some(true));
            if !expandable {
                return Err(ApiError::Forbidden {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!("persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"),
                });
            }
            self.charge_quota(&inner, ctx, &new_stored, &mut quota_pending)?;
        }
        if *live == new_stored && !finishing {
            return Ok(Attempt::Done(Written {
                object: to_external(rt, &ctx.version, &live),
                warnings,
                created: false,
            }));
        }
        if ctx.dry_run {
            return Ok(Attempt::Done(Written {
                object: to_external(rt, &ctx.version, &new_stored),
                warnings,
                created: false,
            }));
        }
        let kind = if finishing {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        let mut pending = vec![(kind, key, new_stored)];
        pending.extend(quota_pending);
        if finishing && rt.special == Special::Pvc {
            self.refresh_quotas(&inner, &ctx.namespace, name, &mut pending);
        }
        let changes = self.commit(inner, pending)?;
        Ok(Attempt::Done(Written {
            object: to_external(rt, &ctx.version, &changes[0].object),
            warnings,
            created: false,
        }))
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; namespaces are
    /// emptied by the garbage collector before they go.
    pub(crate) fn delete(
        &self,
        ctx: &WriteCtx,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let rt = &ctx.rt;
        let key = rt.key(&ctx.namespace_for_key(), name);
        let before = self.writer().objects.get(&key).cloned();
        if let Some(old) = before {
            let old = to_external(rt, &ctx.version, &old);
            self.call_webhooks(
                Hooks::Validating,
                ctx,
                "DELETE",
                Part::Main { has_status: false },
                name,
                None,
                Some(&old),
            )?;
        }
        let inner = self.writer();
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        if let Some(p) = &opts.precondition_rv {
            if meta_str(&current, "resourceVersion") != Some(p.as_str()) {
                return Err(conflict(rt, name));
            }
        }
        if let Some(p) = &opts.precondition_uid {
            if meta_str(&current, "uid") != Some(p.as_str()) {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: UID in precondition: {p}, UID in object meta: {}",
                        meta_str(&current, "uid").unwrap_or("")
                    ),
                    causes: Vec::new(),
                });
            }
        }
        if ctx.dry_run {
            return Ok(to_external(rt, &ctx.version, &current));
        }
        let mut pending: Pending = Vec::new();
        if opts.orphan {
            let uid = meta_str(&current, "uid").unwrap_or("").to_string();
            for (k, v) in inner.objects.iter() {
                if let Some(refs) = v["metadata"]["ownerReferences"].as_array() {
                    if refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str())) {
                        let mut nv = (**v).clone();
                        let kept: Vec<Value> = refs
                            .iter()
                            .filter(|r| r["uid"].as_str() != Some(uid.as_str()))
                            .cloned()
                            .collect();
                        nv["metadata"]["ownerReferences"] = Value::Array(kept);
                        pending.push((EventType::Modified, k.clone(), nv));
                    }
                }
            }
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let terminating_ns = rt.special == Special::Namespace;
        let foreground = opts.foreground && !opts.orphan;
        if has_finalizers || terminating_ns || foreground {
            if current["metadata"].get("deletionTimestamp").is_some() && pending.is_empty() {
                return Ok(to_external(rt, &ctx.version, &current));
            }
            let mut nv = (*current).clone();
            if nv["metadata"].get("deletionTimestamp").is_none() {
                nv["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
                nv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if terminating_ns {
                nv["status"]["phase"] = json!("Terminating");
            }
            if foreground {
                match nv["metadata"]["finalizers"].as_array_mut() {
                    Some(f) if f.iter().any(|x| x == FOREGROUND_FINALIZER) => {}
                    Some(f) => f.push(json!(FOREGROUND_FINALIZER)),
                    None => nv["metadata"]["finalizers"] = json!([FOREGROUND_FINALIZER]),
                }
            }
            pending.insert(0, (EventType::Modified, key, nv));
            let changes = self.commit(inner, pending)?;
            self.gc_wakeup.notify_one();
            return Ok(to_external(rt, &ctx.version, &changes[0].object));
        }
        pending.insert(0, (EventType::Deleted, key, (*current).clone()));
        if rt.special == Special::Pvc {
            self.refresh_quotas(&inner, &ctx.namespace, name, &mut pending);
        }
        let changes = self.commit(inner, pending)?;
        Ok(to_external(rt, &ctx.version, &changes[0].object))
    }
}

/// Outcome of one update attempt.
#[derive(Debug)]
pub(super) enum Attempt {
    Done(Written),
    /// The object changed between reading and committing (no client precondition).
    Raced,
}

/// Where an update's new object comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// A PUT: the client's whole object; its resourceVersion is a precondition.
    Put,
    /// A JSON, merge or strategic patch applied to the current object.
    Patch,
    /// A server-side apply (managed fields come from the apply merge).
    Apply,
}
