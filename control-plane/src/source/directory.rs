//! Standalone source: every `*.yaml` / `*.yml` file in one directory, multi-document.
//!
//! A bad file never takes objects away: if a file cannot be read or is not valid YAML, the
//! objects it held at its last good read stay; if one document is invalid, the last good
//! version of that object (same kind, namespace and name, same file) stays.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
/// whose text did not change is not parsed again; in one that did, only the documents that
/// changed are (`reparse_file`).
#[derive(Debug, Default)]
struct FileRead {
    text_hash: u64,
    /// The length of the file when it was last parsed whole. The parser's limits (documents,
    /// nodes, bytes) are per parse: a file that grows by more than a quarter past it is
    /// parsed whole again rather than document by document, so it cannot grow far past them
    /// unseen.
    parsed_whole: usize,
    problems: Vec<LoadProblem>,
    /// What each document gave, when the file's documents can be told apart by its `---`
    /// lines alone.
    documents: Option<Documents>,
}

/// A file's documents as its `---` lines split it.
#[derive(Debug, PartialEq)]
struct Documents {
    list: Vec<DocumentRead>,
    /// Whether a blank first or last part (which the parser does not count as a document)
    /// was left out.
    blank_first: bool,
    blank_last: bool,
}

/// What one document of a file gave, to be replayed while its text stays the same.
#[derive(Debug, Clone, PartialEq)]
struct DocumentRead {
    /// A hash of its text.
    text_hash: u64,
    /// The object it names, if of a kind RAUTA reads (decoded or, if invalid, its last good
    /// version kept).
    key: Option<(Kind, ObjectRef)>,
    problems: Vec<LoadProblem>,
}

/// Reads a directory and remembers each file's last good objects.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    last_good: BTreeMap<PathBuf, FileObjects>,
    last_read: BTreeMap<PathBuf, FileRead>,
    /// Every file's last good objects together, kept up to date as files change (merging
    /// every file again on each change cost as much as translating): where several files
    /// define an object, the last file in path order wins.
    merged: ObjectSet,
    /// The files defining each object, in path order.
    owners: BTreeMap<(Kind, ObjectRef), Vec<Arc<Path>>>,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectorySource {
            dir: dir.into(),
            last_good: BTreeMap::new(),
            last_read: BTreeMap::new(),
            merged: ObjectSet::default(),
            owners: BTreeMap::new(),
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
                self.duplicates(&mut problems);
                return LoadReport {
                    objects: self.merged.clone(),
                    problems,
                };
            }
        };
        let gone: Vec<PathBuf> = (self.last_good.keys())
            .filter(|path| !files.contains(path))
            .cloned()
            .collect();
        for path in gone {
            if let Some(objects) = self.last_good.remove(&path) {
                self.replace_file(&path, &objects, &FileObjects::new());
            }
        }
        self.last_read.retain(|path, _| files.contains(path));
        for path in files {
            let previous = self.last_good.remove(&path).unwrap_or_default();
            let current = match std::fs::read_to_string(&path) {
                Ok(text) => {
                    match self.last_read.get(&path) {
                        // Unchanged since the last read: same objects, same problems.
                        Some(read) if read.text_hash == text_hash(&text) => {
                            problems.extend(read.problems.iter().cloned());
                            previous
                        }
                        read => {
                            let mut found = Vec::new();
                            let mut parsed_whole = text.len();
                            let reparsed = read
                                .filter(|read| text.len() <= read.parsed_whole / 4 * 5)
                                .and_then(|read| {
                                    parsed_whole = read.parsed_whole;
                                    reparse_file(&path, &text, read, &previous)
                                });
                            let (objects, documents) = match reparsed {
                                Some((objects, documents, found_now)) => {
                                    found = found_now;
                                    (objects, Some(documents))
                                }
                                None => {
                                    parsed_whole = text.len();
                                    parse_file(&path, &text, &previous, &mut found)
                                }
                            };
                            self.replace_file(&path, &previous, &objects);
                            problems.extend(found.iter().cloned());
                            let read = FileRead {
                                text_hash: text_hash(&text),
                                parsed_whole,
                                problems: found,
                                documents,
                            };
                            self.last_read.insert(path.clone(), read);
                            objects
                        }
                    }
                }
                // Removed since the listing: as if it had not been listed.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    self.last_read.remove(&path);
                    self.replace_file(&path, &previous, &FileObjects::new());
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
        self.duplicates(&mut problems);
        LoadReport {
            objects: self.merged.clone(),
            problems,
        }
    }

    /// Brings the merged objects up to date with a file whose objects went from `old` to
    /// `new`: the cost of that file's objects, not of every file's.
    fn replace_file(&mut self, path: &Path, old: &FileObjects, new: &FileObjects) {
        for key in old.keys().filter(|key| !new.contains_key(*key)) {
            let Some(owners) = self.owners.get_mut(key) else {
                continue;
            };
            let was_winner = owners.last().is_some_and(|last| **last == *path);
            owners.retain(|p| **p != *path);
            let (kind, name) = key;
            match owners.last() {
                None => {
                    self.owners.remove(key);
                    self.merged.remove(*kind, name);
                }
                Some(winner) if was_winner => {
                    let object = self.last_good.get(&**winner).and_then(|f| f.get(key));
                    if let Some(object) = object {
                        self.merged.insert(name.clone(), object.clone());
                    }
                }
                Some(_) => {}
            }
        }
        let file: Arc<Path> = Arc::from(path);
        for (key, object) in new {
            let owners = self.owners.entry(key.clone()).or_default();
            if let Err(at) = owners.binary_search_by(|p| (**p).cmp(path)) {
                owners.insert(at, Arc::clone(&file));
            }
            if owners.last().is_some_and(|last| **last == *path) {
                self.merged.insert(key.1.clone(), object.clone());
            }
        }
    }

    /// A problem for each definition of an object after its first, naming the one before it.
    fn duplicates(&self, problems: &mut Vec<LoadProblem>) {
        let mut found: Vec<(&Path, &(Kind, ObjectRef), &Path)> = Vec::new();
        for (key, owners) in self.owners.iter().filter(|(_, o)| o.len() > 1) {
            for pair in owners.windows(2) {
                found.push((&pair[1], key, &pair[0]));
            }
        }
        found.sort();
        problems.extend(
            found
                .into_iter()
                .map(|(path, (kind, key), before)| LoadProblem {
                    file: path.to_owned(),
                    document: None,
                    message: format!(
                        "{kind} {key} is also defined in {}; this definition wins",
                        before.display()
                    ),
                }),
        );
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
    let (objects, _) = parse_file(
        Path::new("<text>"),
        text,
        &FileObjects::new(),
        &mut problems,
    );
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
/// Also returns what each document gave, if its documents line up with `document_ranges`.
fn parse_file(
    path: &Path,
    text: &str,
    previous: &FileObjects,
    problems: &mut Vec<LoadProblem>,
) -> (FileObjects, Option<Documents>) {
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
            return (previous.clone(), None);
        }
    };
    let ranges = document_ranges(text).and_then(|r| aligned(text, r, documents.len()));
    let mut current = FileObjects::new();
    let mut reads = Vec::new();
    let mut twice = false;
    for (index, value) in documents.into_iter().enumerate() {
        let read = read_document(path, index, value, previous, &mut current, &mut twice);
        problems.extend(read.problems.iter().cloned());
        reads.push(read);
    }
    // A file defining an object twice is parsed whole each time: which definition wins
    // depends on documents other than the one edited.
    let reads = ranges
        .filter(|_| !twice)
        .map(|(ranges, blank_first, blank_last)| Documents {
            list: reads
                .into_iter()
                .zip(ranges)
                .map(|(read, range)| DocumentRead {
                    text_hash: text.get(range).map_or(0, text_hash),
                    ..read
                })
                .collect(),
            blank_first,
            blank_last,
        });
    (current, reads)
}

/// Parses a file again after an edit, document by document: a document whose text is the
/// same as at the last read gives what it gave then, unparsed (a file of hundreds of routes
/// where one changed costs one route). None where that cannot be told so: the documents
/// did not line up at the last read or do not now, or an edited document does not parse on
/// its own; the whole file is parsed then.
fn reparse_file(
    path: &Path,
    text: &str,
    read: &FileRead,
    previous: &FileObjects,
) -> Option<(FileObjects, Documents, Vec<LoadProblem>)> {
    let before = read.documents.as_ref()?;
    let (blank_first, blank_last) = (before.blank_first, before.blank_last);
    let (ranges, first, last) = aligned(text, document_ranges(text)?, before.list.len())?;
    if (first, last) != (blank_first, blank_last) {
        return None;
    }
    let before = &before.list;
    let mut current = FileObjects::new();
    let mut documents = Vec::with_capacity(ranges.len());
    let mut problems = Vec::new();
    for (index, (range, old)) in ranges.into_iter().zip(before).enumerate() {
        let chunk = text.get(range)?;
        let read = if text_hash(chunk) == old.text_hash {
            if let Some(key) = &old.key
                && let Some(object) = previous.get(key)
                && current.insert(key.clone(), object.clone()).is_some()
            {
                return None;
            }
            old.clone()
        } else {
            let options = serde_saphyr::options! { with_snippet: false };
            let mut values: Vec<Value> =
                serde_saphyr::from_multiple_with_options(chunk, options).ok()?;
            let value = values.pop().filter(|_| values.is_empty())?;
            let mut twice = false;
            let read = read_document(path, index, value, previous, &mut current, &mut twice);
            if twice {
                return None;
            }
            DocumentRead {
                text_hash: text_hash(chunk),
                ..read
            }
        };
        problems.extend(read.problems.iter().cloned());
        documents.push(read);
    }
    let documents = Documents {
        list: documents,
        blank_first,
        blank_last,
    };
    Some((current, documents, problems))
}

/// Reads one parsed document into `current`; `twice` is set if it names an object an
/// earlier document of the file named.
fn read_document(
    path: &Path,
    index: usize,
    value: Value,
    previous: &FileObjects,
    current: &mut FileObjects,
    twice: &mut bool,
) -> DocumentRead {
    let mut read = DocumentRead {
        text_hash: 0,
        key: None,
        problems: Vec::new(),
    };
    if value.is_null() {
        return read;
    }
    let problem = |message: String| LoadProblem {
        file: path.to_owned(),
        document: Some(index + 1),
        message,
    };
    let (kind, key) = match identify(&value) {
        Ok((Some(kind), key)) => (kind, key),
        Ok((None, _)) => return read, // Deployments and other kinds RAUTA does not read.
        Err(err) => {
            read.problems.push(problem(err.to_string()));
            return read;
        }
    };
    read.key = Some((kind, key.clone()));
    match Object::decode(kind, &key, value) {
        Ok(object) => {
            // An object the edit did not touch stays the same allocation, which tells the
            // translator at a glance that it is unchanged.
            let object = match previous.get(&(kind, key.clone())) {
                Some(old) if old.same(&object) => old.clone(),
                _ => object,
            };
            if current.insert((kind, key.clone()), object).is_some() {
                *twice = true;
                read.problems.push(problem(format!(
                    "{kind} {key} appears twice in this file; the later one wins"
                )));
            }
        }
        Err(err) => {
            read.problems
                .push(problem(format!("{err}; keeping its last good version")));
            if let Some(old) = previous.get(&(kind, key.clone())) {
                current.insert((kind, key), old.clone());
            }
        }
    }
    read
}

/// A hash of a file's or a document's text, to tell whether it changed (a collision would
/// take an edit for no change: one in 2^64).
fn text_hash(text: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x5241_5554_4121).hash_one(text)
}

/// Where each document of a file is, by its `---` lines. None if the file has what a split
/// by lines cannot follow: directives, `...` end markers, content on a `---` line.
fn document_ranges(text: &str) -> Option<Vec<Range<usize>>> {
    let mut ranges = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare.starts_with('%') || bare.starts_with("...") {
            return None;
        }
        if bare.starts_with("---") {
            if bare != "---" {
                return None;
            }
            ranges.push(start..offset);
            start = offset + line.len();
        }
        offset += line.len();
    }
    ranges.push(start..text.len());
    Some(ranges)
}

/// The ranges that line up one to one with the `count` documents the parser found: as they
/// are, or without a blank (or comment-only) first or last part, which the parser may not
/// count as a document; with whether each was left out. None if they do not line up.
fn aligned(
    text: &str,
    mut ranges: Vec<Range<usize>>,
    count: usize,
) -> Option<(Vec<Range<usize>>, bool, bool)> {
    let blank = |r: &Range<usize>| {
        text.get(r.clone()).is_some_and(|t| {
            t.lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        })
    };
    let first = ranges.len() > count && ranges.first().is_some_and(blank);
    if first {
        ranges.remove(0);
    }
    let last = ranges.len() > count && ranges.last().is_some_and(blank);
    if last {
        ranges.pop();
    }
    (ranges.len() == count).then_some((ranges, first, last))
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
            .map(|k| &*k.name)
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

    /// A deterministic generator (xorshift) of numbers below its argument, so that a failure
    /// replays.
    fn below_from(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

    /// The merge as it was done before it was kept up to date: every file's objects in path
    /// order, a later definition replacing an earlier one.
    fn merged_from_scratch(source: &DirectorySource) -> (ObjectSet, Vec<String>) {
        let mut set = ObjectSet::default();
        let mut seen: BTreeMap<(Kind, &ObjectRef), &Path> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (path, objects) in &source.last_good {
            for ((kind, key), object) in objects {
                if let Some(before) = seen.insert((*kind, key), path) {
                    duplicates.push(format!(
                        "{} {kind} {key} {}",
                        path.display(),
                        before.display()
                    ));
                }
                set.insert(key.clone(), object.clone());
            }
        }
        (set, duplicates)
    }

    #[test]
    fn the_merged_objects_equal_a_merge_from_scratch_after_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let service = |name: &str, port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  ports: [{{port: {port}}}]\n"
            )
        };
        let invalid = "apiVersion: v1\nkind: Service\nmetadata: {name: s0, namespace: apps}\nspec:\n  ports: nope\n";
        let mut below = below_from(0x2545_f491_4f6c_dd1d);
        let mut source = DirectorySource::new(dir.path());
        for step in 0..400 {
            let file = dir.path().join(format!("f{}.yaml", below(4)));
            match below(10) {
                0 => {
                    let _ = std::fs::remove_file(&file);
                }
                1 => std::fs::write(&file, "not: [valid").unwrap(),
                2 => std::fs::write(&file, invalid).unwrap(),
                _ => {
                    // A few objects from a small pool: files often define the same ones.
                    let docs: Vec<String> = (0..below(4))
                        .map(|_| service(&format!("s{}", below(6)), 80 + below(3) as u16))
                        .collect();
                    std::fs::write(&file, docs.join("---\n")).unwrap();
                }
            }
            let report = source.load();
            let (expected, duplicates) = merged_from_scratch(&source);
            assert!(
                report.objects.same_as(&expected),
                "step {step}: {:?} != {:?}",
                report.objects.services.keys().collect::<Vec<_>>(),
                expected.services.keys().collect::<Vec<_>>()
            );
            for (key, object) in &expected.services {
                assert!(
                    Arc::ptr_eq(object, &report.objects.services[key]),
                    "step {step}: {key}"
                );
            }
            let reported: Vec<String> = report
                .problems
                .iter()
                .filter(|p| p.message.contains("is also defined in"))
                .map(|p| {
                    let (what, before) = p.message.split_once(" is also defined in ").unwrap();
                    let before = before.split_once(';').unwrap().0;
                    format!("{} {what} {before}", p.file.display())
                })
                .collect();
            assert_eq!(reported, duplicates, "step {step}");
        }
    }

    /// Whether two files' objects are the same objects or equal ones.
    fn same_objects(a: &FileObjects, b: &FileObjects) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|((ka, a), (kb, b))| ka == kb && a.same(b))
    }

    #[test]
    fn a_file_parsed_again_document_by_document_gives_what_parsing_it_whole_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apps.yaml");
        let service = |name: usize, port: usize| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{name}, namespace: apps}}\nspec:\n  ports: [{{port: {port}}}]\n"
            )
        };
        // What a document may become: an object (often one another document names too), an
        // invalid one, one of a kind RAUTA does not read, nothing, a comment, a syntax error.
        let document = |pick: u64, n: usize| match pick {
            0 => format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{n}, namespace: apps}}\nspec:\n  ports: nope\n"
            ),
            1 => "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_owned(),
            2 => String::new(),
            3 => "# only a comment\n".to_owned(),
            4 => "kind: [unclosed\n".to_owned(),
            5 => "metadata: {name: x}\n".to_owned(),
            _ => service(n, 80 + pick as usize),
        };
        let mut next = below_from(0x9e37_79b9_7f4a_7c15);
        let mut documents: Vec<String> = (0..8).map(|i| service(i, 80)).collect();
        let mut source = DirectorySource::new(dir.path());
        let (mut reparsed, mut steps) = (0, 0);
        // A leading part and a trailing `---`, changed now and then.
        let mut framing = (0, false);
        for step in 0..600 {
            // Mostly one document edited; sometimes one added or removed, or the file's
            // framing changed.
            let len = documents.len() as u64;
            match next(20) {
                0 if len > 1 => {
                    documents.remove(next(len) as usize);
                }
                1 => documents.insert(next(len + 1) as usize, document(next(40), 3)),
                _ => {
                    let at = next(len) as usize;
                    documents[at] = document(next(40), next(400) as usize);
                }
            }
            if next(20) == 0 {
                framing = (next(3) as usize, next(2) == 0);
            }
            let lead = ["", "---\n", "# header\n---\n"][framing.0];
            let tail = if framing.1 { "---\n" } else { "" };
            let text = format!("{lead}{}{tail}", documents.join("---\n"));
            let previous = source.last_good.get(&path).cloned().unwrap_or_default();
            if let Some(read) = source.last_read.get(&path) {
                if let Some((objects, documents, problems)) =
                    reparse_file(&path, &text, read, &previous)
                {
                    let mut whole = Vec::new();
                    let (expected, expected_documents) =
                        parse_file(&path, &text, &previous, &mut whole);
                    assert!(same_objects(&objects, &expected), "step {step}: {text}");
                    assert_eq!(problems, whole, "step {step}: {text}");
                    // What the next edit is compared with, too.
                    assert_eq!(Some(documents), expected_documents, "step {step}: {text}");
                    reparsed += 1;
                }
                steps += 1;
            }
            std::fs::write(&path, &text).unwrap();
            source.load();
        }
        assert!(
            reparsed * 2 > steps,
            "parsed by documents {reparsed} times in {steps}"
        );
    }

    #[test]
    fn a_file_grown_by_more_than_a_quarter_is_parsed_whole_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apps.yaml");
        let service = |name: usize, note: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{name}, namespace: apps, annotations: {{note: \"{note}\"}}}}\nspec:\n  ports: [{{port: 80}}]\n"
            )
        };
        let file = |note: &str| {
            let docs: Vec<String> = (0..8)
                .map(|i| service(i, if i == 3 { note } else { "" }))
                .collect();
            docs.join("---\n")
        };
        let mut source = DirectorySource::new(dir.path());
        let first = file("");
        std::fs::write(&path, &first).unwrap();
        source.load();
        let parsed_whole = |source: &DirectorySource| source.last_read[&path].parsed_whole;
        assert_eq!(parsed_whole(&source), first.len());
        // A little longer: parsed document by document, against the size parsed whole.
        std::fs::write(&path, file("a few more bytes")).unwrap();
        source.load();
        assert_eq!(parsed_whole(&source), first.len());
        // Longer by more than a quarter: parsed whole, which sets the size anew.
        let long = file(&"x".repeat(first.len() / 2));
        std::fs::write(&path, &long).unwrap();
        let report = source.load();
        assert_eq!(parsed_whole(&source), long.len());
        assert_eq!(report.objects.services.len(), 8);
    }
}
