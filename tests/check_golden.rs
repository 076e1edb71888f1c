//! Golden tests of the exact `paymux check` output for broken configs, `check` passing on
//! every shipped config (routes/ and examples/), and `paymux key hash`. Regenerate with
//! `UPDATE_GOLDEN=1`.

use std::path::Path;
use std::process::Command;

fn check(dir: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["check", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run paymux");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn golden_broken_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 6, "golden cases missing");
    let mut failures = vec![];
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (code, stdout) = check(&format!("tests/golden/{name}"));
        assert_eq!(code, 1, "{name}: broken config must exit 1\n{stdout}");
        let expected_path = case.join("expected.txt");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &stdout).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != stdout {
            failures.push(format!("== {name}\n-- expected\n{expected}-- got\n{stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_configs_pass_check() {
    for dir in ["routes", "examples/minimal"] {
        let (code, stdout) = check(dir);
        assert_eq!(code, 0, "{dir}: {stdout}");
        assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
    }
}

#[test]
fn shipped_files_point_editors_at_the_schemas() {
    for dir in ["routes", "examples/minimal"] {
        for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let first = text.lines().next().unwrap_or("");
            assert!(
                first.starts_with("# yaml-language-server: $schema=../"),
                "{}: first line is {first:?}",
                p.display()
            );
            let schema = first.split("$schema=").nth(1).unwrap();
            assert!(p.parent().unwrap().join(schema).is_file(), "{}: schema {schema} not found", p.display());
        }
    }
}

/// The README's config reference names every property of every schema.
#[test]
fn readme_config_reference_covers_the_schemas() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Configuration reference").expect("reference section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map(|i| i + 3).unwrap_or(section.len())];
    fn props(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(p) = v.get("properties").and_then(|p| p.as_object()) {
            out.extend(p.keys().cloned());
        }
        match v {
            serde_json::Value::Object(m) => m.values().for_each(|c| props(c, out)),
            serde_json::Value::Array(a) => a.iter().for_each(|c| props(c, out)),
            _ => {}
        }
    }
    let mut missing = vec![];
    for f in ["server", "channels", "routing"] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{f}.schema.json")))
                .unwrap();
        let mut names = vec![];
        props(&serde_json::from_str(&text).unwrap(), &mut names);
        for n in names {
            if !section.contains(&format!("`{n}`")) {
                missing.push(format!("{f}: {n}"));
            }
        }
    }
    assert!(missing.is_empty(), "README config reference misses: {missing:?}");
}

#[test]
fn key_hash_takes_exactly_one_key() {
    let hash = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paymux"))
            .args(["key", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run paymux");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let demo = (true, "b82fd77bd12ed25fb74880b9512e786dd9d384daf03cfdeb8157eb108731cd35".to_string());
    assert_eq!(hash("pmx_test_demo_key\n"), demo);
    assert_eq!(hash("pmx_test_demo_key"), demo);
    // Nothing, or two lines: no hash rather than one no request can match.
    assert_eq!(hash(""), (false, String::new()));
    assert_eq!(hash("a\nb\n"), (false, String::new()));
}

#[test]
fn the_default_data_directory_is_judged_where_serve_runs_not_by_check() {
    // A config without `data_dir`, checked and served from inside its own directory.
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = tmp.path().join("routes");
    std::fs::create_dir(&cfg).unwrap();
    std::os::unix::fs::symlink(root.join("sandbox"), tmp.path().join("sandbox")).unwrap();
    for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
        let text = std::fs::read_to_string(root.join("routes").join(f)).unwrap();
        std::fs::write(cfg.join(f), text.replace("data_dir: ../data\n", "")).unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_paymux")).args(args).current_dir(&cfg).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, text) = run(&["check", "."]);
    assert_eq!(code, 0, "{text}");
    // `serve` here would put the store inside the config directory: refused, saying why.
    let (code, text) = run(&["serve", "--config", "."]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("(the default, `data` in the working directory) is inside the config directory"), "{text}");
}
