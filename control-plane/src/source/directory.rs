//! Standalone source: every `*.yaml` / `*.yml` file in one directory, multi-document.
//!
//! A bad file never takes objects away: if a file cannot be read or is not valid YAML, the
//! objects it held at its last good read stay; if one document is invalid, the last good
//! version of that object (same kind, namespace and name, same file) stays.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::objects::{Kind, Object, ObjectRef, ObjectSet, identify, without_quoted};

/// A problem found while loading; the affected objects keep their last good state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when the problem is in one document.
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(doc) => write!(
                f,
                "{} (document {doc}): {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The outcome of one load: every object, plus the problems met on the way.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub objects: ObjectSet,
    pub problems: Vec<LoadProblem>,
}

type FileObjects = BTreeMap<(Kind, ObjectRef), Object>;

/// What the last read of a file gave: a hash of its text, and the problems it had. A file
/// whose text did not change is not parsed again.
#[derive(Debug, Default)]
struct FileRead {
    text_hash: u64,
    problems: Vec<LoadProblem>,
}

/// Reads a directory and remembers each file's last good objects.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    last_good: BTreeMap<PathBuf, FileObjects>,
    last_read: BTreeMap<PathBuf, FileRead>,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectorySource {
            dir: dir.into(),
            last_good: BTreeMap::new(),
            last_read: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every manifest file now.
    pub fn load(&mut self) -> LoadReport {
        let mut problems = Vec::new();
        let files = match manifest_files(&self.dir) {
            Ok(files) => files,
            Err(err) => {
                // The directory itself is unreadable: keep everything we had.
                problems.push(LoadProblem {
                    file: self.dir.clone(),
                    document: None,
                    message: err.to_string(),
                });
                return LoadReport {
                    objects: self.merged(&mut problems),
                    problems,
                };
            }
        };
        self.last_good.retain(|path, _| files.contains(path));
        self.last_read.retain(|path, _| files.contains(path));
        for path in files {
            let previous = self.last_good.remove(&path).unwrap_or_default();
            let current = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let text_hash = rauta_common::hash::fnv1a64(text.as_bytes());
                    match self.last_read.get(&path) {
                        // Unchanged since the last read: same objects, same problems.
                        Some(read) if read.text_hash == text_hash => {
                            problems.extend(read.problems.iter().cloned());
                            previous
                        }
                        _ => {
                            let mut found = Vec::new();
                            let objects = parse_file(&path, &text, previous, &mut found);
                            problems.extend(found.iter().cloned());
                            let read = FileRead {
                                text_hash,
                                problems: found,
                            };
                            self.last_read.insert(path.clone(), read);
                            objects
                        }
                    }
                }
                // Removed since the listing: as if it had not been listed.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    self.last_read.remove(&path);
                    continue;
                }
                Err(err) => {
                    self.last_read.remove(&path);
                    problems.push(LoadProblem {
                        file: path.clone(),
                        document: None,
                        message: err.to_string(),
                    });
                    previous
                }
            };
            self.last_good.insert(path, current);
        }
        LoadReport {
            objects: self.merged(&mut problems),
            problems,
        }
    }

    fn merged(&self, problems: &mut Vec<LoadProblem>) -> ObjectSet {
        let mut set = ObjectSet::default();
        let mut seen: HashMap<(Kind, &ObjectRef), &Path> = HashMap::new();
        for (path, objects) in &self.last_good {
            for ((kind, key), object) in objects {
                if let Some(first) = seen.insert((*kind, key), path) {
                    problems.push(LoadProblem {
                        file: path.clone(),
                        document: None,
                        message: format!(
                            "{kind} {key} is also defined in {}; this definition wins",
                            first.display()
                        ),
                    });
                }
                set.insert(key.clone(), object.clone());
            }
        }
        set
    }
}

/// Whether a file name is one the source reads: `*.yaml` or `*.yml`, not hidden.
pub fn is_manifest_name(path: &Path) -> bool {
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    is_yaml && !hidden
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_manifest_name(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses manifests from YAML text (for tests and tools): the objects, and the problems found.
pub fn parse_manifests(text: &str) -> (ObjectSet, Vec<LoadProblem>) {
    let mut problems = Vec::new();
    let objects = parse_file(Path::new("<text>"), text, FileObjects::new(), &mut problems);
    let mut set = ObjectSet::default();
    for ((_, key), object) in objects {
        set.insert(key, object);
    }
    (set, problems)
}

/// A YAML syntax error as it may be logged and shown: where, and why; for a file that holds
/// a Secret, without any value the reason quotes.
fn yaml_problem(text: &str, err: &serde_saphyr::Error) -> String {
    let reason = err.to_string();
    let holds_secret = text
        .lines()
        .any(|line| line.trim() == "kind: Secret" || line.trim() == "kind: \"Secret\"");
    let reason = if holds_secret {
        without_quoted(&reason)
    } else {
        reason
    };
    match err.location() {
        Some(at) if !reason.contains(" line ") => {
            format!(
                "invalid YAML at line {}, column {}: {reason}",
                at.line(),
                at.column()
            )
        }
        _ => format!("invalid YAML: {reason}"),
    }
}

/// Parses one file. On a YAML syntax error the whole previous state of the file is kept.
fn parse_file(
    path: &Path,
    text: &str,
    mut previous: FileObjects,
    problems: &mut Vec<LoadProblem>,
) -> FileObjects {
    // No source snippet in the error: the lines around a syntax error in a Secret's file
    // would be its keys.
    let options = serde_saphyr::options! { with_snippet: false };
    let documents: Vec<Value> = match serde_saphyr::from_multiple_with_options(text, options) {
        Ok(docs) => docs,
        Err(err) => {
            problems.push(LoadProblem {
                file: path.to_owned(),
                document: None,
                message: yaml_problem(text, &err),
            });
            return previous;
        }
    };
    let mut current = FileObjects::new();
    for (index, value) in documents.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let problem = |message: String| LoadProblem {
            file: path.to_owned(),
            document: Some(index + 1),
            message,
        };
        let (kind, key) = match identify(&value) {
            Ok((Some(kind), key)) => (kind, key),
            Ok((None, _)) => continue, // Deployments and other kinds RAUTA does not read.
            Err(err) => {
                problems.push(problem(err.to_string()));
                continue;
            }
        };
        match Object::decode(kind, &key, value) {
            Ok(object) => {
                // An object the edit did not touch stays the same allocation, which tells the
                // translator at a glance that it is unchanged.
                let object = match previous.get(&(kind, key.clone())) {
                    Some(old) if old.same(&object) => old.clone(),
                    _ => object,
                };
                if current.insert((kind, key.clone()), object).is_some() {
                    problems.push(problem(format!(
                        "{kind} {key} appears twice in this file; the later one wins"
                    )));
                }
            }
            Err(err) => {
                problems.push(problem(format!("{err}; keeping its last good version")));
                if let Some(old) = previous.remove(&(kind, key.clone())) {
                    current.insert((kind, key), old);
                }
            }
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\nspec:\n  parentRefs: [{name: gw}]\n";
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: apps\nspec:\n  ports: [{port: 80}]\n";

    #[test]
    fn loads_multi_document_files_and_skips_unknown_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("{ROUTE}---\n{SERVICE}---\n{deployment}---\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let report = DirectorySource::new(dir.path()).load();
        assert_eq!(report.problems, vec![]);
        assert!(
            report
                .objects
                .http_routes
                .contains_key(&ObjectRef::new("default", "web"))
        );
        assert!(
            report
                .objects
                .services
                .contains_key(&ObjectRef::new("apps", "echo"))
        );
        assert_eq!(report.objects.len(), 2);
    }

    #[test]
    fn problems_in_secrets_never_quote_their_contents() {
        // A syntax error next to a key: the problem names the line, not the key's text.
        let broken = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\n  namespace: apps\n\
                      type: kubernetes.io/tls\nstringData:\n  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    \
                      MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n  tls.crt: [S3CRETVALUE\n";
        let (_, problems) = parse_manifests(broken);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let message = &problems[0].message;
        assert!(message.contains("line "), "{message}");
        for secret in ["MIIEvQ", "PRIVATE KEY", "S3CRETVALUE"] {
            assert!(!message.contains(secret), "{message}");
        }
        // A Secret that parses but does not decode: serde quotes the value it could not take.
        let wrong_shape = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\n  namespace: apps\n\
                           data: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n";
        let (_, problems) = parse_manifests(wrong_shape);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let message = &problems[0].message;
        assert!(message.contains("invalid Secret apps/tls"), "{message}");
        assert!(!message.contains("MIIEvQ"), "{message}");
    }

    #[test]
    fn syntax_error_keeps_the_files_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        std::fs::write(&file, ROUTE).unwrap();
        let mut source = DirectorySource::new(dir.path());
        assert_eq!(source.load().objects.http_routes.len(), 1);
        std::fs::write(&file, "kind: [unclosed").unwrap();
        let report = source.load();
        assert_eq!(report.objects.http_routes.len(), 1);
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0].message.starts_with("invalid YAML"),
            "{}",
            report.problems[0]
        );
    }

    #[test]
    fn invalid_document_keeps_that_objects_last_good_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        std::fs::write(&file, format!("{ROUTE}---\n{SERVICE}")).unwrap();
        let mut source = DirectorySource::new(dir.path());
        source.load();
        let broken_service = SERVICE.replace("ports: [{port: 80}]", "ports: 7");
        let new_route = ROUTE.replace("name: web", "name: web2");
        std::fs::write(&file, format!("{new_route}---\n{broken_service}")).unwrap();
        let report = source.load();
        assert_eq!(report.problems.len(), 1);
        assert_eq!(report.problems[0].document, Some(2));
        assert!(
            report.problems[0]
                .message
                .contains("invalid Service apps/echo"),
            "{}",
            report.problems[0]
        );
        let routes: Vec<_> = report
            .objects
            .http_routes
            .keys()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(routes, ["web2"]);
        assert_eq!(report.objects.services.len(), 1, "last good Service kept");
    }

    #[test]
    fn deleting_a_file_removes_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yml");
        std::fs::write(&file, ROUTE).unwrap();
        let mut source = DirectorySource::new(dir.path());
        assert_eq!(source.load().objects.len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert!(source.load().objects.is_empty());
    }
}
