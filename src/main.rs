//! `lcs-bridge`: the command line. The only place that prints to the terminal and decides exit
//! codes; everything it shows comes from the library.

#![allow(clippy::disallowed_methods)] // the command line reads the clock for `check-config`

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use lcs_bridge::core::tables::Mappings;
use lcs_bridge::store::{Store, StoreError};
use lcs_bridge::{app, config, doctor, inspect};

/// mimalloc instead of the system allocator (docs/benchmarks.md "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lcs-bridge",
    version,
    about = "XMPP ⇄ Microsoft LCS/OCS/Lync federation bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Try it: a private Prosody, the bridge and a simulated Lync partner (contoso.test) on
    /// loopback, with a live transcript; Ctrl-C stops everything (docs/demo.md).
    Demo {
        /// Prosody's client port (default: 5222 when free, else a free one).
        #[arg(long)]
        c2s_port: Option<u16>,
        /// Seconds between the Lync users' availability changes.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
        presence_every: u64,
    },
    /// Run the bridge.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration offline: files, certificates, domains, mapping tables.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Check a deployment online: DNS, certificates as partners see them, the component
    /// handshake, partners' edges (after check-config's checks).
    Doctor {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// A partner's SIP domain to connect to (mutual TLS, OPTIONS); repeatable.
        #[arg(long = "partner", value_name = "DOMAIN")]
        partners: Vec<String>,
    },
    /// Show how the bridge reads wire data.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Read the persistent store (subscriptions, IM dialogs). The bridge must be stopped.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Administer the running bridge over its local socket (admin.socket): partners,
    /// subscriptions USER, block DOMAIN, unblock DOMAIN, reload.
    Admin {
        /// Configuration file (TOML); the socket is its admin.socket.
        #[arg(long, short, required_unless_present = "socket")]
        config: Option<PathBuf>,
        /// The socket itself, instead of --config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// partners | subscriptions | block | unblock | reload
        command: String,
        /// The command's arguments (a user's bare JID, a SIP domain).
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Count the records by kind, direction and state.
    Stats {
        /// Configuration file (TOML); the store is in its storage.path.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print every record as one JSON object per line (backup and audit).
    Export {
        /// Configuration file (TOML); the store is in its storage.path.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// Parse one SIP message (a file or - for stdin) and print it as JSON.
    Sip {
        input: String,
        /// Mapping tables directory (default: the built-in copies of mappings/).
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Parse a PIDF document and print its presence as JSON.
    Pidf {
        input: String,
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Read an XMPP <presence/> stanza and print the PIDF document the bridge would send.
    Presence {
        input: String,
        /// SIP AOR for the document's entity (default: sip: + the stanza's bare 'from').
        #[arg(long)]
        entity: Option<String>,
        /// HTTPS icon URL to include as ci:icon.
        #[arg(long)]
        icon: Option<String>,
        #[arg(long)]
        mappings: Option<PathBuf>,
    },
    /// Map a JID to a SIP URI or a sip: URI to a JID, in the configured address mode.
    Address {
        address: String,
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Reads a file or standard input (`-`), refusing more than 1 MiB.
fn read_input(input: &str) -> Result<Vec<u8>, String> {
    const LIMIT: u64 = 1024 * 1024;
    let mut buf = Vec::new();
    if input == "-" {
        std::io::stdin()
            .take(LIMIT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        std::fs::File::open(input)
            .and_then(|f| f.take(LIMIT + 1).read_to_end(&mut buf))
            .map_err(|e| format!("cannot read {input:?}: {e}"))?;
    }
    if buf.len() as u64 > LIMIT {
        return Err(format!("{input}: input is larger than {LIMIT} bytes"));
    }
    Ok(buf)
}

fn mappings(dir: Option<&Path>) -> Result<Mappings, String> {
    match dir {
        None => Ok(Mappings::builtin()),
        Some(d) => Mappings::load(d).map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }),
    }
}

fn print_json(v: &serde_json::Value) -> Result<(), String> {
    serde_json::to_string_pretty(v)
        .map(|s| println!("{s}"))
        .map_err(|e| e.to_string())
}

fn run_inspect(cmd: Inspect) -> Result<(), String> {
    match cmd {
        Inspect::Sip { input, mappings: m } => print_json(&inspect::sip(
            &read_input(&input)?,
            &mappings(m.as_deref())?,
        )?),
        Inspect::Pidf { input, mappings: m } => print_json(&inspect::pidf(
            &read_input(&input)?,
            &mappings(m.as_deref())?,
        )?),
        Inspect::Presence {
            input,
            entity,
            icon,
            mappings: m,
        } => {
            let xml = String::from_utf8(read_input(&input)?)
                .map_err(|_| "the presence stanza is not UTF-8".to_owned())?;
            let doc = inspect::presence(
                &xml,
                entity.as_deref(),
                icon.as_deref(),
                &mappings(m.as_deref())?,
            )?;
            print!("{doc}");
            Ok(())
        }
        Inspect::Address { address, config } => {
            let cfg = config::load(&config).map_err(|problems| join_problems(&problems))?;
            let book = cfg.address_book().map_err(|e| format!("xmpp: {e}"))?;
            println!("{}", inspect::address(&book, &address)?);
            Ok(())
        }
    }
}

fn open_store(config: &Path) -> Result<std::sync::Arc<dyn Store>, String> {
    let cfg = config::load(config).map_err(|problems| join_problems(&problems))?;
    lcs_bridge::app::open_store(&cfg.storage, true).map_err(|e| e.root_cause().to_string())
}

/// `store stats` and `store export`. Corrupt records are named on stderr and make the exit
/// status 1; every good record is still counted or printed.
fn run_store(cmd: StoreCmd) -> Result<(), String> {
    match cmd {
        StoreCmd::Stats { config } => {
            let store = open_store(&config)?;
            let stats = store.stats().map_err(|e| e.to_string())?;
            println!("{stats}");
            if stats.corrupt > 0 {
                return Err(format!(
                    "{} records do not decode; `lcs-bridge store export` names them",
                    stats.corrupt
                ));
            }
            Ok(())
        }
        StoreCmd::Export { config } => {
            use std::io::Write as _;
            let store = open_store(&config)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut corrupt = 0u64;
            let mut line = |r: Result<serde_json::Value, StoreError>| -> Result<(), String> {
                match r {
                    Ok(v) => writeln!(out, "{v}")
                        .map_err(|e| format!("cannot write standard output: {e}")),
                    Err(e @ StoreError::Corrupt { .. }) => {
                        eprintln!("error: {e}");
                        corrupt += 1;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            };
            for r in store.subscriptions() {
                line(r.map(|s| s.to_json()))?;
            }
            for r in store.im_dialogs() {
                line(r.map(|d| d.to_json()))?;
            }
            out.flush()
                .map_err(|e| format!("cannot write standard output: {e}"))?;
            if corrupt > 0 {
                return Err(format!("{corrupt} corrupt records were left out"));
            }
            Ok(())
        }
    }
}

fn join_problems(problems: &[config::Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every problem on its own line on stderr; exit status 1 if any.
fn check_config(file: &Path) -> ExitCode {
    let (_, problems) = offline_checks(file);
    if problems.is_empty() {
        println!("{}: OK", file.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// check-config's checks, warnings and problems printed on stderr: the configuration when it
/// loaded, and the problems.
fn offline_checks(file: &Path) -> (Option<config::Config>, Vec<String>) {
    let report = config::check(file, SystemTime::now());
    let mut problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    if let Some(cfg) = &report.config {
        if let Err(table_problems) = Mappings::load(cfg.mappings_dir()) {
            problems.extend(table_problems.iter().map(|p| format!("mappings.path: {p}")));
        }
        if let Err(e) = cfg.address_book() {
            problems.push(format!("xmpp: {e}"));
        }
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for p in &problems {
        eprintln!("{p}");
    }
    (report.config, problems)
}

/// `doctor`: check-config's checks first (stopping on problems), then the online checks, one
/// line each as they complete; exit status 1 if any failed.
fn doctor(file: &Path, partners: Vec<String>) -> ExitCode {
    let (cfg, problems) = offline_checks(file);
    let cfg = match cfg {
        Some(cfg) if problems.is_empty() => cfg,
        _ => {
            eprintln!("error: fix the configuration first (lcs-bridge check-config)");
            return ExitCode::FAILURE;
        }
    };
    let found = rustls_native_certs::load_native_certs();
    let system_roots = if found.certs.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        Err(format!(
            "no system CA certificates found ({})",
            why.join("; ")
        ))
    } else {
        Ok(found.certs)
    };
    let options = doctor::probe::Options {
        partners,
        system_roots,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = runtime.block_on(doctor::probe::run(&cfg, &options, |c| println!("{c}")));
    if doctor::failed(&checks) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `lcs-bridge admin`: the outcome's message, then its lines; exit status 1 when the command
/// failed or the bridge could not be asked.
fn run_admin(
    config: Option<&Path>,
    socket: Option<PathBuf>,
    command: &str,
    args: &[String],
) -> ExitCode {
    let socket = match (socket, config) {
        (Some(s), _) => Ok(s),
        (None, Some(c)) => app::admin::socket_of(c),
        (None, None) => Err(anyhow::anyhow!("--config or --socket is needed")),
    };
    match socket.and_then(|s| app::admin::request(&s, command, args)) {
        Ok(outcome) => {
            println!("{}", outcome.message);
            for line in &outcome.lines {
                println!("  {line}");
            }
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            c2s_port,
            presence_every,
        } => match lcs_bridge::demo::run(&lcs_bridge::demo::Options {
            c2s_port,
            presence_every: std::time::Duration::from_secs(presence_every),
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match app::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => check_config(&file),
        Command::Doctor { config, partners } => doctor(&config, partners),
        Command::Admin {
            config,
            socket,
            command,
            args,
        } => run_admin(config.as_deref(), socket, &command, &args),
        Command::Store(cmd) => match run_store(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', "; "));
                ExitCode::FAILURE
            }
        },
        Command::Inspect(cmd) => match run_inspect(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", e.replace('\n', "; "));
                ExitCode::FAILURE
            }
        },
    }
}
