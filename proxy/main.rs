//! The `flexgate` command: run the proxy, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flexgate::config::{BackendAddress, Config};
use flexgate::server::Proxy;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Security gateway for MySQL and MariaDB.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file, including its certificates and keys, and exit.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

/// How long open sessions may run on after SIGTERM/SIGINT before they are closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config).map_err(|e| e.to_string()).and_then(|c| {
            Proxy::build(&c).map_err(|e| e.to_string())?;
            Ok(c)
        }) {
            Ok(c) => {
                println!("{}: ok ({} listener(s), backend {})", config.display(), c.listeners.len(), c.backend.address);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(path: PathBuf) -> Result<(), String> {
    let cfg = Config::load(&path).map_err(|e| e.to_string())?;
    if matches!(cfg.backend.address, BackendAddress::Unix(_)) && running_as_root() {
        // The server sees every client as a local connection from flexgate's OS user, and
        // MariaDB's root@localhost accepts unix_socket authentication by default.
        return Err(format!(
            "{}: backend.address: refusing to connect to a Unix-socket backend as root: with unix_socket \
             authentication (MariaDB's default for root@localhost) any client could log in as root with any \
             password; run flexgate as its own user (see examples/flexgate.service)",
            path.display()
        ));
    }
    if !cfg.tls.require_secure_transport {
        warn!(
            config = %path.display(),
            "tls.require_secure_transport = false: plaintext clients are accepted and their credentials cross the \
             network unencrypted; use this only for legacy applications that cannot use TLS"
        );
    }
    match flexgate::limits::raise_nofile() {
        Ok(l) if l.soft < 4096 => warn!(
            soft = l.soft,
            hard = l.hard,
            "open-file limit is low: each session needs one descriptor, two while it logs in; raise LimitNOFILE"
        ),
        Ok(l) => info!(before = l.before, soft = l.soft, hard = l.hard, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let proxy = Proxy::build(&cfg).map_err(|e| e.to_string())?;
    let bound = proxy.bind().await.map_err(|e| e.to_string())?.watch_files();
    let reloader = bound.reloader();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            warn!("cannot handle SIGHUP; config changes are still picked up from the files");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the config");
            if reloader.reload().await.is_none() {
                break;
            }
        }
    });
    info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = %cfg.backend.address,
        tls_min_version = %cfg.tls.min_version,
        backend_tls = ?cfg.backend.tls.mode,
        "flexgate started"
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!(grace = ?SHUTDOWN_GRACE, "shutting down: no new connections; open sessions may finish");
        signal.cancel();
    });
    bound.serve(shutdown, SHUTDOWN_GRACE).await;
    info!("stopped");
    Ok(())
}

/// Whether the effective uid is 0 (read from procfs: no unsafe libc call needed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| l.strip_prefix("Uid:").map(|ids| ids.split_whitespace().nth(1) == Some("0")))
        })
        .unwrap_or(false)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C through tokio's fallback can stop us.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLEXGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // User names are attacker-controlled: no ANSI, so they cannot inject escape sequences.
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
