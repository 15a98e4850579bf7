//! A SecurityPolicy's `basicAuth` in its snapshot form: the users of an htpasswd file in a
//! Secret, checked here (a line of another kind than bcrypt or SHA-1 makes the policy invalid,
//! naming the user, never the hash).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rauta_common::api::v1::{BasicAuth, BasicAuthUser};

use super::jwt::is_token;
use super::references::secret_entries;
use super::security::MissingRef;
use crate::crds::security_policy as crd;
use crate::objects::{ObjectRef, ObjectSet};

/// The Secret entry the htpasswd file is read from (or else its only entry).
const HTPASSWD_ENTRY: &str = ".htpasswd";
/// Most users one policy may have (every proxy keeps them all).
const MAX_USERS: usize = 10_000;

pub fn basic_auth(
    objects: &ObjectSet,
    key: &ObjectRef,
    basic: &crd::BasicAuth,
    missing: &mut Vec<MissingRef>,
) -> Result<BasicAuth, String> {
    let forward_username_header = match &basic.forward_username_header {
        Some(h) if !is_token(h) || h.eq_ignore_ascii_case("host") => {
            return Err(format!(
                "basicAuth.forwardUsernameHeader: {h:?} is not a header the proxy may set"
            ));
        }
        Some(h) => h.to_ascii_lowercase(),
        None => String::new(),
    };
    let secret = ObjectRef::new(&key.namespace, basic.users.name.as_str());
    let users = match secret_entries(objects, &secret) {
        None => {
            missing.push(MissingRef {
                kind: "Secret",
                object: secret,
            });
            Vec::new()
        }
        Some(entries) => {
            let file = match entries.iter().find(|(k, _)| k == HTPASSWD_ENTRY) {
                Some((_, v)) => v,
                None if entries.len() == 1 => &entries[0].1,
                None => {
                    return Err(format!(
                        "basicAuth.users: Secret {secret} has no {HTPASSWD_ENTRY:?} entry"
                    ));
                }
            };
            let text = std::str::from_utf8(file)
                .map_err(|_| format!("basicAuth.users: Secret {secret} is not UTF-8"))?;
            htpasswd(text).map_err(|e| format!("basicAuth.users: Secret {secret}: {e}"))?
        }
    };
    Ok(BasicAuth {
        users,
        forward_username_header,
        forward_credentials: basic.forward_credentials.unwrap_or(false),
        name: key.to_string(),
    })
}

/// The users of an htpasswd file: `name:hash` lines; blank lines and `#` comments skipped.
fn htpasswd(text: &str) -> Result<Vec<BasicAuthUser>, String> {
    let mut users: Vec<BasicAuthUser> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(format!("line {} is not name:hash", n + 1));
        };
        if name.is_empty() || !name.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(format!(
                "line {}: user name {name:?} is not printable ASCII",
                n + 1
            ));
        }
        // As the proxy reads them: a bcrypt hash, or the base64 of a 20-byte SHA-1 digest.
        let sha1 = |b64: &str| STANDARD.decode(b64).is_ok_and(|d| d.len() == 20);
        let supported = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
            || hash.strip_prefix("{SHA}").is_some_and(sha1);
        if !supported {
            return Err(format!(
                "user {name:?}: only bcrypt (htpasswd -B) and SHA-1 (htpasswd -s) entries are supported"
            ));
        }
        if users.iter().any(|u| u.username == name) {
            return Err(format!("user {name:?} is listed twice"));
        }
        users.push(BasicAuthUser {
            username: name.to_owned(),
            password_hash: hash.to_owned(),
        });
    }
    if users.len() > MAX_USERS {
        return Err(format!("more than {MAX_USERS} users"));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_lines_of_known_kinds_are_read() {
        let users = htpasswd(
            "# ops\nann:$2y$05$abcdefghijklmnopqrstuuJ5c0wGjFs/9PbLhbz5jAOtFvIKhyAxa\n\nsam:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        )
        .unwrap();
        let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["ann", "sam"]);
        for bad in [
            "joe:$apr1$x$y",
            "joe",
            "joe:plain",
            "ann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            // 28 characters that are not the base64 of 20 bytes.
            "joe:{SHA}AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let e = htpasswd(bad).unwrap_err();
            assert!(
                !e.contains("apr1$x$y") && !e.contains("plain"),
                "no hash in {e}"
            );
        }
    }
}
