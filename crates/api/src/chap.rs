//! Per-volume CHAP credentials as CSI passes them (`secrets` of ControllerPublishVolume
//! and NodeStageVolume, from the PV's controllerPublishSecretRef / nodeStageSecretRef):
//! the keys of open-iscsi and the kubernetes-csi iscsi driver, their checks, and the
//! driver-owned Secret a volume's target reads them from (docs/csi.md § Security).
//!
//! Invariants: credentials are whole (a name without its secret, or half a mutual pair,
//! is refused, never half applied); a secret is 12 to 255 bytes (RFC 7143 §12.1.3 asks
//! for at least 96 bits; our target and initiator refuse shorter). Never: puts a secret
//! in an error message.

use std::collections::BTreeMap;

/// The user name the initiator logs in with.
pub const USERNAME: &str = "node.session.auth.username";
/// Its secret.
pub const PASSWORD: &str = "node.session.auth.password";
/// Mutual CHAP: the name the target answers the initiator's challenge with.
pub const USERNAME_IN: &str = "node.session.auth.username_in";
/// Mutual CHAP: the target's secret.
pub const PASSWORD_IN: &str = "node.session.auth.password_in";

/// Name of the driver-owned Secret of volume `volume`: `cstor-chap-<volume>`.
pub fn secret_name(volume: &str) -> String {
    format!("cstor-chap-{volume}")
}

/// One volume's CHAP credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The initiator's user name.
    pub user: String,
    /// The initiator's secret.
    pub secret: String,
    /// Mutual CHAP: the target's name and secret.
    pub mutual: Option<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

fn check_secret(key: &str, s: &str) -> Result<(), String> {
    if (12..=255).contains(&s.len()) {
        Ok(())
    } else {
        Err(format!("{key} must be 12 to 255 bytes, not {}", s.len()))
    }
}

impl Credentials {
    /// The credentials in `secrets` (CSI's map, or a Secret's data as text); None when
    /// it names no user (no CHAP). Err says which key is missing or malformed.
    pub fn from_map<'a>(
        secrets: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Option<Credentials>, String> {
        let m: BTreeMap<&str, &str> = secrets
            .into_iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let get = |k: &str| m.get(k).copied().filter(|v| !v.is_empty());
        let (user, secret) = match (get(USERNAME), get(PASSWORD)) {
            (None, None) => {
                if get(USERNAME_IN).is_some() || get(PASSWORD_IN).is_some() {
                    return Err(format!(
                        "{USERNAME_IN}/{PASSWORD_IN} need {USERNAME} and {PASSWORD}"
                    ));
                }
                return Ok(None);
            }
            (Some(u), Some(p)) => (u, p),
            (Some(_), None) => return Err(format!("{USERNAME} is given without {PASSWORD}")),
            (None, Some(_)) => return Err(format!("{PASSWORD} is given without {USERNAME}")),
        };
        check_secret(PASSWORD, secret)?;
        let mutual = match (get(USERNAME_IN), get(PASSWORD_IN)) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                check_secret(PASSWORD_IN, p)?;
                if p == secret {
                    return Err(format!("{PASSWORD_IN} must differ from {PASSWORD}"));
                }
                Some((u.to_owned(), p.to_owned()))
            }
            _ => return Err(format!("{USERNAME_IN} and {PASSWORD_IN} go together")),
        };
        Ok(Some(Credentials {
            user: user.to_owned(),
            secret: secret.to_owned(),
            mutual,
        }))
    }

    /// The credentials as CSI `secrets` / Secret data.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            (USERNAME.to_owned(), self.user.clone()),
            (PASSWORD.to_owned(), self.secret.clone()),
        ]);
        if let Some((u, p)) = &self.mutual {
            m.insert(USERNAME_IN.to_owned(), u.clone());
            m.insert(PASSWORD_IN.to_owned(), p.clone());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn credentials_are_whole_or_refused() {
        assert_eq!(Credentials::from_map(&map(&[])).unwrap(), None);
        let c = Credentials::from_map(&map(&[(USERNAME, "u"), (PASSWORD, "0123456789ab")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.mutual), ("u", None));
        let m = Credentials::from_map(&map(&[
            (USERNAME, "u"),
            (PASSWORD, "0123456789ab"),
            (USERNAME_IN, "t"),
            (PASSWORD_IN, "ba9876543210"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(m.mutual.as_ref().unwrap().0, "t");
        assert_eq!(Credentials::from_map(&m.to_map()).unwrap(), Some(m));
        for bad in [
            map(&[(USERNAME, "u")]),
            map(&[(PASSWORD, "0123456789ab")]),
            map(&[(USERNAME, "u"), (PASSWORD, "short")]),
            map(&[
                (USERNAME, "u"),
                (PASSWORD, "0123456789ab"),
                (USERNAME_IN, "t"),
            ]),
            map(&[(USERNAME_IN, "t"), (PASSWORD_IN, "ba9876543210")]),
        ] {
            let e = Credentials::from_map(&bad).unwrap_err();
            assert!(!e.contains("0123456789ab"), "no secret in {e}");
        }
    }
}
