//! The `flexgate` command: run the proxy, or check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flexgate::config::{BackendAddress, Config};
use flexgate::server::{Proxy, Stop};
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
        /// Print the effective config (defaults filled in, secrets redacted).
        #[arg(long)]
        print: bool,
    },
    /// Show a running flexgate's state, from its admin API.
    Status {
        /// The admin API's address (host:port); default: `[admin] address` of --config.
        #[arg(long)]
        admin: Option<String>,
        /// Config file to take the admin address and token file from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bearer token file, if the admin API requires one.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the admin API answers 200 on /healthz or /readyz (for container HEALTHCHECKs,
    /// where there is no shell or curl).
    Probe {
        /// Which endpoint.
        #[arg(value_enum)]
        endpoint: Endpoint,
        /// The admin API's address (host:port).
        #[arg(long, default_value = flexgate::config::DEFAULT_ADMIN_ADDRESS)]
        admin: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Endpoint {
    Healthz,
    Readyz,
}

/// Bound on every admin API request from the CLI.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config, print } => match Config::load(&config).map_err(|e| e.to_string()).and_then(|c| {
            Proxy::build(&c).map_err(|e| e.to_string())?;
            Ok(c)
        }) {
            Ok(c) if print => {
                println!("# {}: ok; the effective config (defaults filled in, secrets redacted)", config.display());
                print!("{}", c.effective_toml());
                ExitCode::SUCCESS
            }
            Ok(c) => {
                println!("{}: ok ({} listener(s), backend {})", config.display(), c.listeners.len(), c.backend.address);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { admin, config, token_file, json } => {
            client(async move { status(admin, config, token_file, json).await })
        }
        Command::Probe { endpoint, admin } => client(async move {
            let path = match endpoint {
                Endpoint::Healthz => "/healthz",
                Endpoint::Readyz => "/readyz",
            };
            let (code, body) = get(&admin, path, None).await?;
            if code == 200 { Ok(()) } else { Err(format!("{path}: HTTP {code}: {}", body.trim())) }
        }),
        Command::Run { config } => {
            // Before any thread starts: taking the sockets changes the environment.
            let inherited = flexgate::systemd::Inherited::from_env();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(run(config, inherited));
            // Sessions cut off by the drain timeout or a second signal close here.
            runtime.shutdown_timeout(Duration::from_secs(1));
            match result {
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

/// Runs a CLI request on a small runtime; an error goes to stderr with exit code 1.
fn client(f: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One GET to the admin API: the status code and the body.
async fn get(admin: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let url = format!("http://{admin}{path}");
    // Plain HTTP to the admin API: no CA store is needed, and a minimal image has none.
    let http = reqwest::Client::builder()
        .timeout(ADMIN_TIMEOUT)
        .no_proxy()
        .https_only(false)
        .tls_certs_only([])
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut req = http.get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}; is flexgate running with [admin] configured?"))?;
    let code = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((code, body))
}

async fn status(
    admin: Option<String>,
    config: Option<PathBuf>,
    token_file: Option<PathBuf>,
    json: bool,
) -> Result<(), String> {
    let cfg = config.as_deref().map(Config::load).transpose().map_err(|e| e.to_string())?;
    let from_cfg = cfg.as_ref().and_then(|c| c.admin.as_ref());
    let admin = admin
        .or_else(|| from_cfg.map(|a| a.address.to_string()))
        .unwrap_or_else(|| flexgate::config::DEFAULT_ADMIN_ADDRESS.to_owned());
    let token_file = token_file.or_else(|| from_cfg.and_then(|a| a.token_file.clone()));
    let token = token_file.as_deref().map(flexgate::config::read_token).transpose()?;
    let (code, body) = get(&admin, "/status", token.as_deref().map(String::as_str)).await?;
    if code != 200 {
        return Err(format!("/status: HTTP {code}: {}", body.trim()));
    }
    if json {
        print!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}"))?;
    print!("{}", describe_status(&v));
    Ok(())
}

/// The human-readable form of `/status`.
fn describe_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let str_of = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let _ = writeln!(
        out,
        "flexgate {} (pid {}), up {:.0}s, {}",
        str_of(&v["version"]),
        v["pid"],
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        if v["ready"].as_bool() == Some(true) { "ready" } else { "NOT READY" }
    );
    if let Some(conds) = v["readiness"].as_object() {
        for (name, c) in conds {
            let ok = if c["ok"].as_bool() == Some(true) { "ok" } else { "FAILING" };
            let _ = writeln!(out, "  {name}: {ok} ({})", str_of(&c["detail"]));
        }
    }
    let c = &v["config"];
    let _ = writeln!(
        out,
        "config {} generation {} ({} reload attempt(s)); last: {} {}",
        str_of(&c["file"]),
        c["generation"],
        c["reload_attempts"],
        if c["last_reload"]["ok"].as_bool() == Some(true) { "ok" } else { "REJECTED" },
        str_of(&c["last_reload"]["detail"])
    );
    let _ = writeln!(
        out,
        "backend {} ({})",
        str_of(&v["backend"]["address"]),
        if v["backend"]["reachable"].as_bool() == Some(true) { "reachable" } else { "UNREACHABLE" }
    );
    for l in v["listeners"].as_array().into_iter().flatten() {
        let r = &l["refused"];
        let _ = writeln!(
            out,
            "listener {} on {}: {} open, {} accepted, refused: firewall {} limit {} proxy_header {} draining {} key {}",
            str_of(&l["name"]),
            str_of(&l["address"]),
            l["sessions_active"],
            l["accepted"],
            r["firewall"],
            r["limit"],
            r["proxy_header"],
            r["draining"],
            r["key_unavailable"]
        );
        if let Some(secs) = l["certificate"]["expires_in_seconds"].as_f64() {
            let _ = writeln!(out, "  certificate expires in {:.1} days", secs / 86400.0);
        }
    }
    let s = &v["sessions"];
    let _ = writeln!(out, "sessions: {} open, {} accepted since start", s["active"], s["accepted"]);
    let k = &v["breaker"];
    if k["configured"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "key breaker: {} (on_inaccessible = {}){}",
            str_of(&k["state"]).to_uppercase(),
            str_of(&k["on_inaccessible"]),
            k["cause"].as_str().map(|c| format!(": {c}")).unwrap_or_default()
        );
        for p in k["providers"].as_array().into_iter().flatten() {
            let result = match p["ok"].as_bool() {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "not checked yet",
            };
            let _ = writeln!(
                out,
                "  provider {} ({}): {result} {}",
                str_of(&p["name"]),
                str_of(&p["kind"]),
                p["detail"].as_str().unwrap_or("")
            );
        }
    } else {
        let _ = writeln!(out, "key breaker: not configured");
    }
    out
}

async fn run(path: PathBuf, inherited: flexgate::systemd::Inherited) -> Result<(), String> {
    let cfg = Config::load(&path).map_err(|e| e.to_string())?;
    if matches!(cfg.backend.address, BackendAddress::Unix(_)) && running_as_root() {
        // The server sees every client as a local connection from flexgate's OS user, and
        // MariaDB's root@localhost accepts unix_socket authentication by default.
        return Err(format!(
            "{}: backend.address: refusing to connect to a Unix-socket backend as root: with unix_socket \
             authentication (MariaDB's default for root@localhost) any client could log in as root with any \
             password; run flexgate as its own user (see examples/systemd/flexgate.service)",
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
    if !inherited.is_empty() {
        info!(sockets = inherited.len(), "socket activation: listening sockets passed by systemd");
    }
    let bound = proxy.bind_with(inherited).await.map_err(|e| e.to_string())?.watch_files();
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
    let stop = Stop::default();
    let signals = stop.clone();
    let drain_timeout = cfg.shutdown.drain_timeout;
    let mut incoming = StopSignals::new();
    tokio::spawn(async move {
        incoming.next().await;
        info!(drain_timeout = ?drain_timeout, "stop signal: draining (a second signal stops at once)");
        signals.drain.cancel();
        incoming.next().await;
        signals.now.cancel();
    });
    bound.serve(stop).await;
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

/// SIGTERM and SIGINT, each time one arrives. The streams are made once, so that a second
/// signal is not lost between two waits.
struct StopSignals {
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self { streams: signal(SignalKind::terminate()).ok().zip(signal(SignalKind::interrupt()).ok()) }
    }

    async fn next(&mut self) {
        match &mut self.streams {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers, only Ctrl-C through tokio's fallback can stop us.
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
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
