//! ResourceQuota admission and bookkeeping for PersistentVolumeClaims
//! (`requests.storage`, `persistentvolumeclaims`, per-StorageClass forms).

use super::*;

impl Core {
    /// PersistentVolumeClaim admission against the namespace's ResourceQuotas
    /// (`requests.storage`, `persistentvolumeclaims`, and the per-StorageClass forms);
    /// queues the quotas' new `status.used`.
    pub(super) fn charge_quota(
        &self,
        inner: &Staged,
        ctx: &WriteCtx,
        pvc: &Value,
        pending: &mut Pending,
    ) -> Result<(), ApiError> {
        let prefix = format!("core/resourcequotas/{}/", ctx.namespace);
        let quotas: Vec<(String, Arc<Value>)> = inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if quotas.is_empty() {
            return Ok(());
        }
        let name = meta_str(pvc, "name").unwrap_or("").to_string();
        // On a resize the claim's old size is replaced, not added to.
        let mut pvcs: Vec<Value> = self
            .namespace_pvcs(inner, &ctx.namespace)
            .into_iter()
            .filter(|p| meta_str(p, "name") != Some(name.as_str()))
            .collect();
        pvcs.push(pvc.clone());
        for (key, q) in quotas {
            let (used, exceeded) = quota_usage(&q, &pvcs, pvc);
            if !exceeded.is_empty() {
                let qname = meta_str(&q, "name").unwrap_or("");
                let requested: Vec<String> = exceeded
                    .iter()
                    .map(|(r, req, _, _)| format!("{r}={req}"))
                    .collect();
                let used_s: Vec<String> = exceeded
                    .iter()
                    .map(|(r, _, u, _)| format!("{r}={u}"))
                    .collect();
                let limited: Vec<String> = exceeded
                    .iter()
                    .map(|(r, _, _, l)| format!("{r}={l}"))
                    .collect();
                return Err(ApiError::QuotaExceeded {
                    resource: "persistentvolumeclaims".into(),
                    name: name.clone(),
                    message: format!(
                        "persistentvolumeclaims \"{name}\" is forbidden: exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        requested.join(","),
                        used_s.join(","),
                        limited.join(",")
                    ),
                });
            }
            let mut nq = (*q).clone();
            nq["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": used});
            pending.push((EventType::Modified, key, nq));
        }
        Ok(())
    }

    pub(super) fn namespace_pvcs(&self, inner: &Staged, ns: &str) -> Vec<Value> {
        let prefix = format!("core/persistentvolumeclaims/{ns}/");
        inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    pub(super) fn refresh_quotas(
        &self,
        inner: &Staged,
        ns: &str,
        without: &str,
        pending: &mut Pending,
    ) {
        let prefix = format!("core/resourcequotas/{ns}/");
        let pvcs: Vec<Value> = self
            .namespace_pvcs(inner, ns)
            .into_iter()
            .filter(|p| meta_str(p, "name") != Some(without))
            .collect();
        for (k, q) in inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            let (used, _) = quota_usage(q, &pvcs, &Value::Null);
            let mut nq = (**q).clone();
            nq["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": used});
            pending.push((EventType::Modified, k.clone(), nq));
        }
    }
}

/// Usage of a quota over `pvcs` (which include `new` when it is being admitted) and the
/// resources `new` pushes over their limit: (resource, requested, used, limit).
pub(super) fn quota_usage(
    q: &Value,
    pvcs: &[Value],
    new: &Value,
) -> (Value, Vec<(String, String, String, String)>) {
    let mut used = Map::new();
    let mut exceeded = Vec::new();
    let Some(hard) = q["spec"]["hard"].as_object() else {
        return (Value::Object(used), exceeded);
    };
    let req = |p: &Value| {
        p["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(quantity::parse_milli)
            .unwrap_or(0)
    };
    let class = |p: &Value| {
        p["spec"]["storageClassName"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for (res, limit) in hard {
        let Some(limit_m) = limit
            .as_str()
            .map(str::to_string)
            .or_else(|| limit.as_i64().map(|i| i.to_string()))
            .and_then(|s| quantity::parse_milli(&s))
        else {
            continue;
        };
        let (sc, base) = match res.split_once(".storageclass.storage.k8s.io/") {
            Some((sc, base)) => (Some(sc.to_string()), base),
            None => (None, res.as_str()),
        };
        let relevant = |p: &Value| sc.as_ref().is_none_or(|s| *s == class(p));
        let (total, this): (i128, i128) = match base {
            "requests.storage" => (
                pvcs.iter().filter(|p| relevant(p)).map(req).sum(),
                if relevant(new) { req(new) } else { 0 },
            ),
            "persistentvolumeclaims" => (
                pvcs.iter().filter(|p| relevant(p)).count() as i128 * 1000,
                if relevant(new) && !new.is_null() {
                    1000
                } else {
                    0
                },
            ),
            _ => continue,
        };
        used.insert(res.clone(), json!(quantity::format_milli(total)));
        if this > 0 && total > limit_m {
            exceeded.push((
                res.clone(),
                quantity::format_milli(this),
                quantity::format_milli(total - this),
                quantity::format_milli(limit_m),
            ));
        }
    }
    (Value::Object(used), exceeded)
}
