//! User story 1: `paymux serve --config routes --with-sandbox` serves the example policy
//! against the sandbox and prints a curl line that creates a payment. The printed line is run
//! as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped: a failed check does not leave it
/// holding the demo's ports.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `THP_enabled` line of a process's /proc status (`self` for this one).
#[cfg(target_os = "linux")]
fn thp_line(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("THP_enabled:")).unwrap_or("no THP_enabled line").to_string()
}

#[test]
fn demo_prints_a_working_curl_line() {
    let data = tempfile::tempdir().unwrap();
    // A simulator's port held by another process: the start stops there, with the reason,
    // before paymux opens or records anything.
    {
        let held = std::net::TcpListener::bind("127.0.0.1:9102").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_paymux"))
            .args(["serve", "--config", "routes", "--with-sandbox", "--data-dir"])
            .arg(data.path())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        drop(held);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("sandbox") && err.contains("127.0.0.1:9102"), "{err}");
        assert!(!data.path().join("audit.jsonl").exists(), "nothing recorded for a start that did not happen");
    }
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_paymux"))
            .args(["serve", "--config", "routes", "--with-sandbox", "--data-dir"])
            .arg(data.path())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("MIMALLOC_ALLOW_THP")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut curl = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.trim_start().starts_with("curl ") {
            curl = Some(line.trim().to_string());
            break;
        }
    }
    let curl = curl.expect("no curl line printed");
    // Wait for the API and the sandbox.
    let t = Instant::now();
    while std::net::TcpStream::connect("127.0.0.1:8080").is_err()
        || std::net::TcpStream::connect("127.0.0.1:9101").is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(20), "demo did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    // paymux turns transparent huge pages off for itself (main.rs: each 2 MiB of new heap
    // cost a fault of milliseconds); the kernel reports it per process since Linux 5.0.
    #[cfg(target_os = "linux")]
    assert_eq!(thp_line(&child.0.id().to_string()), "THP_enabled:\t0");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(body["status"], "succeeded", "{curl}\n{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(body["channel"], "stripe_primary");
}

/// `paymux sandbox --listen 127.0.0.1:0`: every listener on a port the OS picks, and the banner
/// names the bound ports (it said :0 and put the simulators on ports 1, 2 and 3). With the
/// allocator's own `MIMALLOC_ALLOW_THP` set, paymux leaves transparent huge pages as it found
/// them (as this test process has them).
#[test]
fn sandbox_on_port_zero_prints_the_ports_it_took() {
    for allow_thp in [None, Some("1")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paymux"));
        cmd.args(["sandbox", "--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null());
        match allow_thp {
            Some(v) => cmd.env("MIMALLOC_ALLOW_THP", v),
            None => cmd.env_remove("MIMALLOC_ALLOW_THP"),
        };
        let mut child = Killed(cmd.spawn().unwrap());
        let lines: Vec<String> =
            BufReader::new(child.0.stdout.take().unwrap()).lines().map_while(Result::ok).take(4).collect();
        let ports: Vec<u16> = lines
            .iter()
            .filter_map(|l| l.split("http://127.0.0.1:").nth(1))
            .map(|rest| rest.split('/').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 4, "{lines:?}");
        assert!(ports.iter().all(|&p| p > 1024), "{lines:?}");
        assert!(ports.iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()), "{lines:?}");
        #[cfg(target_os = "linux")]
        {
            let expected = if allow_thp.is_some() { thp_line("self") } else { "THP_enabled:\t0".into() };
            assert_eq!(thp_line(&child.0.id().to_string()), expected);
        }
    }
}
