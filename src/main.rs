//! The `paymux` binary: command-line parsing and process setup only (`anyhow` lives here).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// See Cargo.toml: glibc malloc cost about a tenth of paymux's CPU per payment under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "paymux",
    version,
    about = "Payment routing proxy: one normalised API, YAML routing policy, safe failover"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the payments API and the admin listener.
    Serve {
        /// Config directory.
        #[arg(long, default_value = "routes")]
        config: PathBuf,
        /// Payments API address (overrides `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Admin address (overrides `admin_listen`).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Data directory for the database and audit log (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Base URL providers call back to (overrides `public_base_url`; with `--listen`,
        /// set this too so callbacks reach the new address).
        #[arg(long)]
        public_base_url: Option<String>,
        /// Worker threads per service (default: number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Also run the provider sandbox in this process (the demo setup of `routes/`): its
        /// control API on 127.0.0.1:9100, the simulators on 9101-9103. For other ports, run
        /// `paymux sandbox` beside paymux instead.
        #[arg(long)]
        with_sandbox: bool,
    },
    /// Run the provider simulators (Stripe-compatible PSP, Antom) with fault injection.
    Sandbox {
        /// Control API address; the simulators listen on the next three ports
        /// (stripe_primary, stripe_backup, antom_hk); with port 0, each on a port the OS
        /// picks (printed at start).
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
        /// Where the simulators send callbacks (paymux's public base URL).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        callback_base: String,
        /// Faults to start with: YAML or JSON map of instance name to faults.
        #[arg(long)]
        faults: Option<PathBuf>,
        /// Also serve the Antom simulator over TLS here (the Antom SDK always uses port 443).
        #[arg(long)]
        antom_tls_listen: Option<std::net::SocketAddr>,
    },
    /// Verify the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Validate a config directory; print every error as FILE:LINE:COL: message.
    Check {
        /// Config directory.
        dir: PathBuf,
        /// Also read secrets, load keys and resolve provider hosts, as `serve` does.
        #[arg(long)]
        online: bool,
    },
    /// API key helpers.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; exit 1 naming the first bad record.
    Verify {
        /// The audit log (`<data dir>/audit.jsonl`).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Print the SHA-256 of a key read from standard input, for `api_keys[].sha256`.
    Hash,
}

/// Turns transparent huge pages off for this process (Linux), before it allocates much.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and the
/// kernel then zeroes 2 MiB at a time on the first touch of each: on the 2-vCPU VM of
/// BENCHMARKS.md a thread stopped for milliseconds every time paymux's (or the sandbox's)
/// memory grew by 2 MiB, which set the p99 of every request in flight. This is the usual
/// advice for latency-bound servers (Redis, databases) and what mimalloc's own
/// `MIMALLOC_ALLOW_THP=0` does. With `MIMALLOC_ALLOW_THP` set, paymux leaves them to the
/// allocator (and to what the process inherited: the flag passes from parent to child).
fn no_huge_page_faults() -> Result<(), String> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true).map_err(|e| e.to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    let thp = no_huge_page_faults();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PAYMUX_LOG")
                .unwrap_or_else(|_| "info,pingora_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = thp {
        tracing::warn!(error = %e, "could not turn transparent huge pages off; expect latency spikes as memory grows");
    }
    match cli.cmd {
        Cmd::Serve { config, listen, admin_listen, data_dir, public_base_url, threads, with_sandbox } => {
            let opts = paymux::server::ServeOptions {
                config_dir: config,
                overrides: paymux::config::Overrides { listen, admin_listen, data_dir, public_base_url },
                threads: threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
                sandbox_control: with_sandbox.then_some(SANDBOX_CONTROL.into()),
            };
            serve(&opts)
        }
        Cmd::Sandbox { listen, callback_base, faults, antom_tls_listen } => {
            if !paymux::domain::is_http_url(&callback_base) {
                eprintln!("error: --callback-base `{callback_base}` is not an absolute http(s) URL (paymux's public base URL, e.g. http://127.0.0.1:8080)");
                return ExitCode::FAILURE;
            }
            let mut cfg = paymux::sandbox::SandboxConfig::at(listen, &callback_base);
            if let Some(a) = cfg.antom.first_mut() {
                a.tls_listen = antom_tls_listen;
            }
            if let Some(f) = faults {
                match paymux::sandbox::load_faults(&f) {
                    Ok(m) => {
                        // Named here with the file; SandboxService::bind would refuse it too.
                        if let Some(why) = cfg.unknown_fault_instance(&m) {
                            eprintln!("error: {}: {why}", f.display());
                            return ExitCode::FAILURE;
                        }
                        cfg.faults = m
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            // Bound (and its faults checked) before saying where it listens.
            let service = match paymux::sandbox::SandboxService::bind(cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            println!("paymux sandbox: control http://{}/_sandbox/faults", service.control_addr());
            for (name, kind, url) in service.instances() {
                println!("  {name:<15} {kind:<7} {url}");
            }
            paymux::sandbox::run_standalone(service);
            ExitCode::SUCCESS
        }
        Cmd::Audit { cmd: AuditCmd::Verify { file } } => match paymux::audit::verify::verify_file(&file) {
            Ok(r) => {
                println!("{}: ok ({} records, last seq {}, head {})", file.display(), r.records, r.last_seq, r.head);
                ExitCode::SUCCESS
            }
            Err(b) => {
                println!("{}: {b}", file.display());
                ExitCode::FAILURE
            }
        },
        Cmd::Check { dir, online } => check(&dir, online),
        Cmd::Key { cmd: KeyCmd::Hash } => {
            let mut s = String::new();
            // Typed at a terminal: the line is the key. Piped: all of it, to refuse several.
            let stdin = std::io::stdin();
            let read = if std::io::IsTerminal::is_terminal(&stdin) {
                stdin.read_line(&mut s).map(drop)
            } else {
                std::io::Read::read_to_string(&mut stdin.lock(), &mut s).map(drop)
            };
            if read.is_err() {
                eprintln!("error: cannot read the key from standard input");
                return ExitCode::FAILURE;
            }
            // One key, on one line: hashing an empty input or the first of several lines
            // would give a hash no request can ever match.
            let key = s.strip_suffix('\n').unwrap_or(&s);
            let key = key.strip_suffix('\r').unwrap_or(key);
            if key.is_empty() || key.contains(['\n', '\r']) {
                eprintln!("error: give exactly one key, on one line, on standard input");
                return ExitCode::FAILURE;
            }
            println!("{}", paymux::crypto::sha256_hex(key.as_bytes()));
            ExitCode::SUCCESS
        }
    }
}

fn check(dir: &std::path::Path, online: bool) -> ExitCode {
    let result = if online {
        paymux::config::load_dir(dir, &Default::default()).map(|p| {
            format!(
                "ok (version {}, {} channels, {} rules; secrets and hosts resolved)",
                p.version,
                p.channels.len(),
                p.router.rules().len()
            )
        })
    } else {
        paymux::config::check_dir(dir).map(|()| "ok".to_string())
    };
    match result {
        Ok(summary) => {
            println!("{}: {summary}", dir.display());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            print!("{}", paymux::config::diag::render(&diags));
            ExitCode::FAILURE
        }
    }
}

/// The demo sandbox with its control API at `control` and simulators on the next ports.
/// Where `serve --with-sandbox` puts the sandbox's control API (the simulators on the next
/// ports, as `routes/channels.yaml` expects).
const SANDBOX_CONTROL: ([u8; 4], u16) = ([127, 0, 0, 1], 9100);

fn serve(opts: &paymux::server::ServeOptions) -> ExitCode {
    let built = match paymux::server::build(opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let p = built.policy.load_full();
    if let Some(control) = opts.sandbox_control {
        println!("  sandbox       control http://{control}/_sandbox/faults; stripe_primary :9101, stripe_backup :9102, antom_hk :9103");
    }
    let scheme = if p.server.tls.is_some() { "https" } else { "http" };
    println!("paymux {} serving policy {} from {}", env!("CARGO_PKG_VERSION"), p.version, opts.config_dir.display());
    println!("  payments API  {scheme}://{}", p.server.listen);
    println!(
        "  admin         http://{}  (/metrics /healthz /readyz /admin/config /admin/reload)",
        p.server.admin_listen
    );
    println!("  data          {}", p.server.data_dir.display());
    println!();
    // The demo key only where this policy accepts it; otherwise the app's own key goes there.
    const DEMO_KEY: &str = "pmx_test_demo_key";
    let key = if p.authenticate(DEMO_KEY).is_some() { DEMO_KEY } else { "<your API key>" };
    println!("Create a payment:");
    println!(
        "  curl -s {scheme}://{}/v1/payments -H 'Authorization: Bearer {key}' -H \"Idempotency-Key: $(date +%s%N)\" -d '{{\"amount\":19999,\"currency\":\"HKD\",\"method\":\"visa\",\"order_id\":\"order-1001\",\"payment_method_data\":{{\"token\":\"pm_card_visa\"}}}}'",
        p.server.listen
    );
    drop(p);
    built.server.run(pingora::server::RunArgs::default());
    ExitCode::SUCCESS
}
