//! Config loading: one pipeline for startup, `paymux check` and hot reload.
//!
//! YAML text → `serde_json::Value` (serde_yaml) → JSON Schema (every error mapped back to
//! `file:line:col` by [`spans`]) → typed raw structs ([`raw`], `deny_unknown_fields`) →
//! semantic checks and compilation ([`compile`]) → an immutable [`Policy`]. Every error of every
//! file is collected; nothing is published unless the whole directory is valid.
//!
//! Only this module knows YAML or the file format.

pub mod compile;
pub mod diag;
pub mod raw;
pub mod schema;
pub mod secret_ref;
pub mod spans;

pub use diag::Diagnostic;

use crate::policy::Policy;
use serde_json::Value;
use spans::SpanMap;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Largest config file accepted (guards against YAML alias bombs and mistakes).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Command-line settings that override the `server` file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    /// Where providers call back (`public_base_url`).
    pub public_base_url: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// One parsed file with what diagnostics need.
pub struct Parsed {
    pub file: String,
    pub dir: PathBuf,
    pub spans: SpanMap,
    pub doc: Value,
    pub sha256: String,
}

impl Parsed {
    /// A diagnostic at `pointer` in this file.
    pub fn diag(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        let p = self.spans.locate(pointer);
        Diagnostic { file: self.file.clone(), line: p.line, col: p.col, message: message.into(), help: None }
    }

    /// A diagnostic at the value (not the key) at `pointer`.
    pub fn diag_value(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        let p = self.spans.locate_value(pointer);
        Diagnostic { file: self.file.clone(), line: p.line, col: p.col, message: message.into(), help: None }
    }
}

/// The YAML files of a config directory, in file-name order. Hidden names (editors' lock and
/// backup files, `.#routing.yaml`) are not config. A `.yaml` name whose symbolic link leads
/// nowhere is an error, not a file to skip: skipping it would silently drop its rules.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let at = |file: String, message: String| Diagnostic { file, line: 1, col: 1, message, help: None };
    let rd = std::fs::read_dir(dir)
        .map_err(|e| vec![at(dir.display().to_string(), format!("cannot read config directory: {e}"))])?;
    let mut files = Vec::new();
    let mut broken = Vec::new();
    for p in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        let hidden = p.file_name().is_none_or(|n| n.as_encoded_bytes().starts_with(b"."));
        // `.YAML` too: a file the merchant named so is config, not something to skip unread.
        let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if hidden || !matches!(ext.as_deref(), Some("yaml" | "yml")) {
            continue;
        }
        // Followed through links: a file is config, a directory is not, and a link that
        // leads nowhere (or cannot be followed) is reported.
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => files.push(p),
            Ok(_) => {}
            Err(e) => {
                let target =
                    std::fs::read_link(&p).map(|t| format!(" (a link to `{}`)", t.display())).unwrap_or_default();
                broken.push(at(p.display().to_string(), format!("cannot be read{target}: {e}")));
            }
        }
    }
    if !broken.is_empty() {
        broken.sort_by(|a, b| a.file.cmp(&b.file));
        return Err(broken);
    }
    files.sort();
    Ok(files)
}

/// Loads, validates and compiles a config directory into a servable policy (secrets read,
/// keys loaded, host names resolved).
pub fn load_dir(dir: &Path, overrides: &Overrides) -> Result<Policy, Vec<Diagnostic>> {
    match load(dir, overrides, compile::Mode::Serve)? {
        Some(p) => Ok(p),
        None => Err(vec![]),
    }
}

/// Validates a config directory without reading secrets or resolving hosts (`paymux check`).
pub fn check_dir(dir: &Path) -> Result<(), Vec<Diagnostic>> {
    load(dir, &Overrides::default(), compile::Mode::Check).map(|_| ())
}

fn load(dir: &Path, overrides: &Overrides, mode: compile::Mode) -> Result<Option<Policy>, Vec<Diagnostic>> {
    let files = config_files(dir)?;
    if files.is_empty() {
        return Err(vec![Diagnostic {
            file: dir.display().to_string(),
            line: 1,
            col: 1,
            message: "no `.yaml` files in the config directory".into(),
            help: Some("a config directory needs a `server`, a `channels` and a `routing` file".into()),
        }]);
    }
    let mut diags = Vec::new();
    let mut parsed = Vec::new();
    // What failed before the semantic stage, so its knock-on errors can be told apart.
    let mut failed_kinds: HashSet<String> = HashSet::new();
    let mut failed_unknown_kind = false;
    let mut kind_of_file: HashMap<String, String> = HashMap::new();
    for path in &files {
        match parse_file(path, dir) {
            Ok(p) => parsed.push(p),
            Err(mut d) => {
                failed_unknown_kind = true;
                diags.append(&mut d)
            }
        }
    }
    // Schema errors stop a file from reaching the typed stage, but every file is still checked.
    let mut typed = compile::Typed::default();
    for p in parsed {
        let kind = p.doc.get("kind").and_then(Value::as_str).map(str::to_string);
        let Some(kind) = kind.filter(|k| schema::kinds().any(|s| s == k)) else {
            let kinds: Vec<&str> = schema::kinds().collect();
            let mut d = match p.doc.get("kind") {
                None if p.doc.is_object() => p.diag("", "missing `kind`"),
                None => p.diag("", "a config file must be a mapping with a `kind` field"),
                Some(_) => p.diag_value("/kind", format!("unknown kind; expected one of: {}", kinds.join(", "))),
            };
            let got = p.doc.get("kind").and_then(Value::as_str).unwrap_or("");
            d.help = (!got.is_empty())
                .then(|| diag::suggest(got, kinds.iter().copied()))
                .flatten()
                .map(|s| format!("did you mean `{s}`?"));
            diags.push(d);
            failed_unknown_kind = true;
            continue;
        };
        let errs = schema::validate(&kind, &p.doc, &p.spans, &p.file);
        if !errs.is_empty() {
            diags.extend(errs);
            failed_kinds.insert(kind);
            continue;
        }
        kind_of_file.insert(p.file.clone(), kind.clone());
        if let Err(d) = typed.add(&kind, p) {
            diags.push(d);
            failed_kinds.insert(kind);
        }
    }
    if !diags.is_empty() {
        // Every error at once: the semantic checks still run on the files that passed, and
        // their errors are kept where they cannot be knock-on effects of a broken file
        // (routing rules name channels; a file whose kind is unknown could be anything).
        if !failed_unknown_kind {
            let blocked = |k: &str| failed_kinds.contains(k) || (k == "routing" && failed_kinds.contains("channels"));
            if let Err(more) = compile::compile(typed, dir, overrides, compile::Mode::Check) {
                diags.extend(more.into_iter().filter(|d| kind_of_file.get(&d.file).is_some_and(|k| !blocked(k))));
            }
        }
        return Err(diags);
    }
    compile::compile(typed, dir, overrides, mode)
}

fn parse_file(path: &Path, dir: &Path) -> Result<Parsed, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let at =
        |line: usize, col: usize, message: String| Diagnostic { file: file.clone(), line, col, message, help: None };
    let meta = std::fs::metadata(path).map_err(|e| vec![at(1, 1, format!("cannot read file: {e}"))])?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(vec![at(1, 1, format!("file is larger than {MAX_FILE_BYTES} bytes"))]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| vec![at(1, 1, format!("cannot read file: {e}"))])?;
    // A byte order mark (editors on Windows write one) is not content: YAML allows it only
    // before a document's start, and the YAML reader took one straight before a key as a
    // second document.
    let text = text.strip_prefix('\u{feff}').map(String::from).unwrap_or(text);
    let syntax = |e: serde_yaml::Error| {
        let full = e.to_string();
        // serde_yaml appends " at line L column C"; the prefix already says where. An error
        // may add where the construct it was reading began (", while scanning a quoted
        // scalar at line 3 column 11"): for a quoted scalar or a flow collection that is
        // where the mistake is (the unclosed quote or bracket), not where it was found (the
        // end of the file). A block mapping's start says nothing of the sort.
        let msg = full.split(" at line ").next().unwrap_or(&full).to_string();
        let began = full.split_once(", while ").and_then(|(_, ctx)| {
            let (what, at) = ctx.split_once(" at line ")?;
            if !(what.starts_with("scanning") || what.starts_with("parsing a flow")) {
                return None;
            }
            let (line, col) = at.split_once(" column ")?;
            Some((what.to_string(), line.trim().parse::<usize>().ok()?, col.trim().parse::<usize>().ok()?))
        });
        if let Some((what, line, col)) = began {
            return vec![at(line, col, format!("YAML syntax error: {msg} while {what} that begins here"))];
        }
        let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or_else(|| {
            // A second document has no location of its own: point at its `---` (the first
            // `---` starts the first document when only comments, directives and blank lines
            // come before it).
            let marks: Vec<usize> =
                text.lines().enumerate().filter(|(_, l)| l.starts_with("---")).map(|(i, _)| i + 1).collect();
            let explicit_first = text
                .lines()
                .find(|l| !(l.trim().is_empty() || l.trim_start().starts_with('#') || l.starts_with('%')))
                .is_some_and(|l| l.starts_with("---"));
            let second = marks.get(usize::from(explicit_first)).copied();
            (second.filter(|_| msg.contains("more than one document")).unwrap_or(1), 1)
        });
        let what = if msg.contains("out of range") {
            "number out of range (integers must fit in 64 bits)".to_string()
        } else if msg.contains("more than one document") {
            "a config file holds one YAML document; split the others into their own files".to_string()
        } else if msg.contains("invalid type: enum") {
            // serde_yaml reads `!name value` as an enum variant.
            let field = msg.split(": invalid type").next().filter(|f| *f != msg).unwrap_or("a value");
            format!("{field}: YAML tags (`!name`) are not supported; a secret is the string `env:NAME` or `file:PATH`")
        } else {
            format!("YAML syntax error: {msg}")
        };
        vec![at(line, col, what)]
    };
    // The position reader first (it reads what serde_yaml reads, and more): duplicate keys and
    // merge keys are found by it wherever they are, whichever way the document is read.
    let spans = SpanMap::build(&text);
    let doc: Value = match spans.as_ref().ok().and_then(|s| s.merges().first().map(|_| s)) {
        // YAML merge keys (`<<: *defaults`): applied before anything reads the document.
        Some(s) if s.duplicates().is_empty() => {
            let mut y: serde_yaml::Value = serde_yaml::from_str(&text).map_err(syntax)?;
            // A merge takes a mapping or a list of mappings: the first `<<` that holds
            // anything else is the one apply_merge refuses.
            let bad = s.merges().iter().find(|(ptr, _)| !mergeable(yaml_at(&y, ptr))).or(s.merges().first());
            let merge_at = |e: &dyn std::fmt::Display| {
                let pos = bad.map_or(spans::Pos { line: 1, col: 1 }, |(_, pos)| *pos);
                vec![at(pos.line, pos.col, format!("YAML merge key: {e}"))]
            };
            y.apply_merge().map_err(|e| merge_at(&e))?;
            serde_json::to_value(&y).map_err(|e| merge_at(&e))?
        }
        _ => serde_yaml::from_str::<Value>(&text).map_err(syntax)?,
    };
    let spans = spans.map_err(|(pos, e)| {
        vec![at(pos.line, pos.col, format!("YAML that paymux cannot locate errors in: {e}"))
            .with_help("write plain block or flow YAML, indented with spaces")]
    })?;
    let duplicates = spans.duplicates().iter().map(|(ptr, pos)| {
        at(pos.line, pos.col, format!("duplicate key `{}`", schema::display_path(ptr)))
            .with_help("a YAML mapping takes each key once; merge the two entries")
    });
    let non_finite = spans.non_finite().iter().map(|(ptr, pos, text)| {
        let path = schema::display_path(ptr);
        at(pos.line, pos.col, format!("`{path}` is `{text}`, which YAML reads as a float that is not a finite number (no config value can be one)"))
            .with_help("write a finite number, or quote it (without a `!!float` tag) for the text")
    });
    let errors: Vec<Diagnostic> = duplicates.chain(non_finite).collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Parsed { spans, file, dir: dir.to_path_buf(), doc, sha256: crate::crypto::sha256_hex(text.as_bytes()) })
}

/// The node of a YAML document at a JSON pointer (before merges are applied).
fn yaml_at<'a>(y: &'a serde_yaml::Value, pointer: &str) -> Option<&'a serde_yaml::Value> {
    use serde_yaml::Value as Y;
    pointer.split('/').skip(1).try_fold(y, |node, seg| {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let node = if let Y::Tagged(t) = node { &t.value } else { node };
        match node {
            Y::Sequence(v) => v.get(seg.parse::<usize>().ok()?),
            Y::Mapping(m) => m.get(seg.as_str()),
            _ => None,
        }
    })
}

/// What a merge key may hold: a mapping, or a list of mappings.
fn mergeable(v: Option<&serde_yaml::Value>) -> bool {
    use serde_yaml::Value as Y;
    match v {
        Some(Y::Mapping(_)) => true,
        Some(Y::Sequence(items)) => items.iter().all(|i| matches!(i, Y::Mapping(_))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// `text` as a config file of its own, parsed.
    fn parse(text: &str) -> Result<super::Parsed, Vec<super::Diagnostic>> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, text).unwrap();
        super::parse_file(&f, dir.path())
    }

    /// Only a real merge key selects the merge-key reading: `<<` in a comment did, and then a
    /// bad merge was placed at that comment, and a duplicate key got another message.
    #[test]
    fn merge_keys_are_found_as_keys_and_the_bad_one_is_named() {
        let text = "# Tip: share settings (<<: *anchor)\nkind: channels\nbase: &b {connect_ms: 500}\nt:\n  <<: *b\nu:\n  <<: [*b, 5]\n";
        let e = parse(text).err().unwrap();
        assert_eq!((e[0].line, e[0].col), (7, 3), "{e:?}");
        assert!(e[0].message.starts_with("YAML merge key"), "{e:?}");
        // A duplicate key reads the same with a merge key (or a `<<` comment) in the file.
        for text in
            ["# <<\nkind: routing\nr:\n  a: 1\n  a: 2\n", "kind: routing\nb: &b {x: 1}\nr:\n  <<: *b\n  a: 1\n  a: 2\n"]
        {
            let e = parse(text).err().unwrap();
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].message.starts_with("duplicate key `r.a`"), "{e:?}");
        }
        assert_eq!(
            parse("kind: routing\nb: &b {x: 1}\nr:\n  <<: *b\n  a: 1\n").unwrap().doc["r"],
            json!({"x": 1, "a": 1})
        );
    }

    #[test]
    fn yaml_merge_keys_are_applied_and_bad_ones_located() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        let text = "kind: channels\nbase: &b { connect_ms: 500, attempt_ms: 3000 }\nt:\n  <<: *b\n  attempt_ms: 2000\n";
        std::fs::write(&f, text).unwrap();
        let p = super::parse_file(&f, dir.path()).unwrap();
        assert_eq!(p.doc["t"], json!({"connect_ms": 500, "attempt_ms": 2000}));
        std::fs::write(&f, "kind: channels\nt:\n  <<: 5\n").unwrap();
        let e = super::parse_file(&f, dir.path()).err().unwrap();
        assert_eq!((e[0].line, e[0].col), (3, 3), "{:?}", e[0]);
        assert!(e[0].message.contains("merge"), "{}", e[0].message);
    }

    #[test]
    fn not_a_number_and_infinity_are_named_where_written() {
        // Too large for a float: serde_yaml keeps the text ("found string" at the schema).
        let e = parse("kind: server\nlimits: {max_body_bytes: 1e400}\nu: [1e5, \"1e400\", 1e400x]\n").err().unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.starts_with("`limits.max_body_bytes` is `1e400`"), "{e:?}");
        let e = parse("kind: channels\nt: { connect_ms: .nan, attempt_ms: -.Inf }\nu: [\".nan\", '.inf', .info]\n")
            .err()
            .unwrap();
        let got: Vec<_> = e.iter().map(|d| (d.line, d.col, d.message.as_str())).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (2, 18), "{got:?}");
        assert!(
            got[0].2.starts_with("`t.connect_ms` is `.nan`") && got[0].2.contains("not a finite number"),
            "{got:?}"
        );
        assert_eq!((got[1].0, got[1].1), (2, 36), "{got:?}");
        assert!(got[1].2.starts_with("`t.attempt_ms` is `-.Inf`"), "{got:?}");
        // Tagged as a float, quoting does not make it text.
        let e = parse("kind: channels\na: !!float \".nan\"\nb: !<tag:yaml.org,2002:float> '-.inf'\n").err().unwrap();
        let got: Vec<_> = e.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(got, [(2, 12), (3, 31)], "{e:?}");
        // Quoted or tagged as a string, it is the text; `.info` is a plain string.
        let p = parse("kind: channels\nu: [\".nan\", '.inf', .info, !!str .nan]\n").unwrap();
        assert_eq!(p.doc["u"], json!([".nan", ".inf", ".info", ".nan"]));
    }

    /// `paymux check` (offline) refused what startup refuses: an unknown settlement currency
    /// passed the check and failed the deploy.
    #[test]
    fn offline_check_refuses_an_unknown_settlement_currency() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
            let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes").join(f));
            std::fs::write(dir.path().join(f), text.unwrap()).unwrap();
        }
        super::check_dir(dir.path()).unwrap();
        let ch = dir.path().join("channels.yaml");
        let text = std::fs::read_to_string(&ch).unwrap();
        let anchor = "client_id: SANDBOX_PAYMUX_DEMO";
        assert!(text.contains(anchor), "the example's Antom channel changed");
        std::fs::write(&ch, text.replacen(anchor, &format!("{anchor}\n      settlement_currency: HKX"), 1)).unwrap();
        let e = super::check_dir(dir.path()).err().unwrap();
        assert!(e.iter().any(|d| d.message.contains("HKX")), "{e:?}");
    }

    /// A tab after `key:` is YAML serde_yaml reads and the position reader refused: the file
    /// then lost its duplicate-key check (the second `route` won) and every position.
    #[test]
    fn a_tab_after_a_colon_keeps_positions_and_duplicate_keys() {
        let e = parse("kind:\trouting\nrules:\n  - name: cards\n    route:\n      channels: [a]\n    route:\tx\n")
            .err()
            .unwrap();
        assert_eq!((e[0].line, e[0].col), (6, 5), "{e:?}");
        assert!(e[0].message.contains("duplicate key `rules[0].route`"), "{e:?}");
        let p = parse("kind:\trouting\nrules: []\n").unwrap();
        assert_eq!(p.spans.locate("/rules").line, 2);
    }

    #[test]
    fn a_yaml_tag_is_named_as_unsupported() {
        let e = parse("kind: channels\nclient_id: !env ANTOM_CLIENT\n").err().unwrap();
        assert_eq!(e[0].line, 2, "{:?}", e[0]);
        assert!(e[0].message.starts_with("client_id: YAML tags (`!name`) are not supported"), "{:?}", e[0]);
    }

    #[test]
    fn an_unclosed_quote_is_located_where_it_opens() {
        let e = parse("kind: routing\nrules:\n  - name: \"x\n    route: {}\ndefault: {}\n").err().unwrap();
        assert_eq!((e[0].line, e[0].col), (3, 11), "{e:?}");
        assert!(e[0].message.contains("quoted scalar that begins here"), "{e:?}");
    }

    #[test]
    fn second_documents_and_huge_numbers_are_named_and_located() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "kind: channels\nchannels: []\n---\nkind: routing\n").unwrap();
        let e = super::parse_file(&f, dir.path()).err().unwrap();
        assert_eq!((e[0].line, e[0].col), (3, 1), "{:?}", e[0]);
        assert!(e[0].message.contains("one YAML document"), "{}", e[0].message);
        // The header comment README recommends, then an explicit first document.
        std::fs::write(&f, "# yaml-language-server: $schema=x\n---\nkind: channels\n---\nkind: routing\n").unwrap();
        let e = super::parse_file(&f, dir.path()).err().unwrap();
        assert_eq!((e[0].line, e[0].col), (4, 1), "{:?}", e[0]);
        std::fs::write(&f, "kind: server\nlimits:\n  max_body_bytes: 99999999999999999999999\n").unwrap();
        let e = super::parse_file(&f, dir.path()).err().unwrap();
        assert!(e[0].message.contains("out of range"), "{}", e[0].message);
        assert_eq!(e[0].line, 3, "{:?}", e[0]);
    }

    #[test]
    fn hidden_files_are_not_config_and_a_dangling_link_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("routing.yaml"), "kind: routing\n").unwrap();
        std::fs::write(d.join(".routing.yaml"), "kind: routing\n").unwrap();
        std::os::unix::fs::symlink("nowhere", d.join(".#routing.yaml")).unwrap();
        std::fs::write(d.join("notes.txt"), "").unwrap();
        assert_eq!(super::config_files(d).unwrap(), vec![d.join("routing.yaml")]);
        std::fs::write(d.join("20-hk.YAML"), "kind: routing\n").unwrap();
        assert_eq!(super::config_files(d).unwrap(), vec![d.join("20-hk.YAML"), d.join("routing.yaml")]);
        std::fs::remove_file(d.join("20-hk.YAML")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", d.join("05-usd.yaml")).unwrap();
        let e = super::config_files(d).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].file.ends_with("05-usd.yaml") && e[0].message.contains("`gone.yaml`"), "{e:?}");
        // A directory with a config-like name, linked or not, is not config.
        std::fs::remove_file(d.join("05-usd.yaml")).unwrap();
        std::fs::create_dir(d.join("old.yaml")).unwrap();
        std::os::unix::fs::symlink("old.yaml", d.join("older.yaml")).unwrap();
        assert_eq!(super::config_files(d).unwrap(), vec![d.join("routing.yaml")]);
    }

    #[test]
    fn a_byte_order_mark_is_not_content_and_a_route_mixing_forms_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
            let text = std::fs::read_to_string(root.join("routes").join(f)).unwrap();
            // The schema comment line dropped: the mark sits right before the first key.
            let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
            std::fs::write(dir.path().join(f), format!("\u{feff}{body}")).unwrap();
        }
        assert!(super::check_dir(dir.path()).is_ok(), "{:?}", super::check_dir(dir.path()));
        let routing = std::fs::read_to_string(dir.path().join("routing.yaml")).unwrap();
        let mixed = routing.replace("channels: [antom_hk]", "channels: [antom_hk]\n      backups: [stripe_backup]");
        std::fs::write(dir.path().join("routing.yaml"), mixed).unwrap();
        let errs = super::check_dir(dir.path()).unwrap_err();
        assert!(errs[0].message.contains("`backups` goes with `split` only"), "{errs:?}");
    }
}
