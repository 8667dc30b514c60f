//! switchback: a reverse proxy for zero-downtime deploys.
//!
//! This file parses the command line and hands off: `run` and `demo` start the proxy (the
//! `switchback-daemon` crate), every other command is a client of the control socket
//! (src/cli.rs). A client command sends only what the user typed; the proxy fills in every
//! default, so there is one place that knows them.

mod cli;
mod demo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use switchback_control::{
    CanaryReply, CertsReply, DeployReply, PoolSetReply, ReloadReply, Request, RolloutReply,
    StatusReply, SwitchReply, UpgradeReply,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchback",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SWITCHBACK_COMMIT"), ")"),
    about = "A reverse proxy for zero-downtime deploys"
)]
struct Cli {
    /// The control socket to talk to (default: the [control] socket of --config).
    #[arg(long, global = true, env = "SWITCHBACK_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "SWITCHBACK_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Log format of the proxy's own logs.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run the proxy in front of two built-in demo backends, blue and green.
    Demo {
        /// Port of the proxy's HTTP listener on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Check a config file and exit: 0 when it is valid, 2 with every problem when not.
    Check,
    /// Print the shell completion script for SHELL (the Debian package installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, switchback(1), as roff.
    Manpage,
    /// Write a starter config for one app: its host names, its backends as the blue pool, an
    /// empty green pool for the next deploy, and TLS by ACME. The config is checked first; it
    /// is printed, or written to --output, never over an existing file.
    Init {
        /// A host name the app answers for (repeat for more).
        #[arg(long = "host", required = true, value_name = "NAME")]
        hosts: Vec<String>,
        /// A backend of the blue pool, which serves first: `127.0.0.1:8000` or `name:port`
        /// (repeat for more).
        #[arg(long = "backend", required = true, value_name = "ADDR")]
        backends: Vec<String>,
        /// A backend of the green pool (repeat for more); empty by default, for `pool set`.
        #[arg(long = "backend-green", value_name = "ADDR")]
        backends_green: Vec<String>,
        /// The contact address of the ACME account.
        #[arg(long, value_name = "EMAIL")]
        acme_email: Option<String>,
        /// Plain HTTP only: no certificates, no HTTPS listener.
        #[arg(long, conflicts_with = "acme_email")]
        no_tls: bool,
        /// The plain-HTTP listen address.
        #[arg(long, default_value = "0.0.0.0:80", value_name = "ADDR")]
        http: String,
        /// The HTTPS listen address.
        #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR")]
        https: String,
        /// The service's name.
        #[arg(long, default_value = "app", value_name = "NAME")]
        service: String,
        /// The state directory.
        #[arg(long, default_value = "/var/lib/switchback", value_name = "DIR")]
        state_dir: String,
        /// Write the config to FILE (which must not exist) instead of printing it.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Translate another proxy's config into switchback's: the config on stdout, every
    /// directive left behind on stderr with file:line and why.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Show every service, its pools, each backend's health, the active pool and the split.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Send all new requests of a service to POOL; requests in flight finish where they are.
    Switch {
        pool: String,
        #[command(flatten)]
        target: Target,
        /// Switch even when POOL has no healthy backend.
        #[arg(long)]
        force: bool,
        /// Return only once nothing is in flight to the old pool (or --drain-timeout passed).
        #[arg(long)]
        wait_drain: bool,
        /// How long --wait-drain waits.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        drain_timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Undo the last change: abort a running rollout, end a canary, or go back to the pool
    /// that was active before the last switch.
    Rollback {
        #[command(flatten)]
        target: Target,
        /// Roll back even when that pool has no healthy backend.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change the backends of a pool.
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// List the TLS certificates (names, issuer, expiry, next renewal, last error), or renew one.
    Certs {
        #[command(subcommand)]
        command: Option<CertsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Load every certificate file pair again (after replacing the files).
    ReloadCerts {
        #[arg(long)]
        json: bool,
    },
    /// Start a new process from the binary at the path this one was started from (after
    /// `install new-switchback /usr/local/bin/switchback`, say), hand it the listening sockets
    /// with no refused connection, and drain and stop the old one. Exits 0 once the new
    /// process serves; 1, with the old one still serving, if it cannot start.
    Upgrade {
        #[arg(long)]
        json: bool,
    },
    /// Read the config file again and apply it with no restart (SIGHUP does the same). A file
    /// with any problem changes nothing: every problem is shown as file:line: key.
    Reload {
        /// Apply it even when it removes a pool in use (the active pool, a canary, a
        /// rollout's): traffic goes to the file's active pool, canaries and rollouts end.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send PERCENT of a service's clients (0 to 100, one decimal) to POOL, the rest to the
    /// active pool; `canary POOL 0` ends it. Each client keeps its pool while the split holds.
    Canary {
        pool: String,
        #[arg(value_parser = parse_percent, allow_hyphen_values = true)]
        percent: f64,
        #[command(flatten)]
        target: Target,
        /// Even when POOL has no healthy backend.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Move a canary of POOL through --steps, judging it after each --interval; promote it at
    /// the end (exit 0) or roll back at the first breach (exit 3). The rollout runs in the
    /// proxy: stopping this command does not stop it (`--watch` follows it again, `--abort`
    /// stops it and rolls back).
    Rollout {
        #[arg(required_unless_present_any = ["watch", "abort"])]
        pool: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Percentages of clients on POOL, increasing.
        #[arg(long, value_delimiter = ',', value_parser = parse_percent)]
        steps: Option<Vec<f64>>,
        /// How long each step is watched before the next.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        interval: Option<Duration>,
        /// Percent of 5xx answers (or failed connections) in a step that rolls back.
        #[arg(long, value_parser = parse_percent, value_name = "PERCENT")]
        max_error_rate: Option<f64>,
        /// p95 latency in a step that rolls back.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        max_p95: Option<Duration>,
        /// Canary requests a step needs before it is judged.
        #[arg(long, value_name = "N")]
        min_requests: Option<u64>,
        /// Even when POOL has no healthy backend.
        #[arg(long)]
        force: bool,
        /// Follow the running rollout (or show how the last one ended).
        #[arg(long, conflicts_with_all = ["abort", "pool"])]
        watch: bool,
        /// Stop the running rollout and send every client back to the stable pool.
        #[arg(long, conflicts_with = "pool")]
        abort: bool,
        /// One JSON object per line: each event, then the end.
        #[arg(long)]
        json: bool,
    },
    /// Deploy BACKEND[,BACKEND…] in one command: set them on the pool that is not active
    /// (--pool when the service has more than two), wait until they pass their health checks
    /// (else nothing is switched: exit 1, saying which backend failed and how), switch to it
    /// (or with --rollout roll it out: exit 3 if it rolls back), and wait for the old pool to
    /// drain. The deploy runs in the proxy: stopping this command does not stop it (`--watch`
    /// follows it again).
    Deploy {
        #[arg(
            value_delimiter = ',',
            value_name = "BACKEND",
            required_unless_present = "watch"
        )]
        backends: Vec<String>,
        #[command(flatten)]
        target: Target,
        /// The pool to deploy to (required when the service has more than two).
        #[arg(long)]
        pool: Option<String>,
        /// Roll the pool out as `rollout` does, with its options, instead of switching.
        #[arg(long)]
        rollout: bool,
        /// With --rollout: percentages of clients on the pool, increasing.
        #[arg(long, value_delimiter = ',', value_parser = parse_percent, requires = "rollout")]
        steps: Option<Vec<f64>>,
        /// With --rollout: how long each step is watched before the next.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "rollout")]
        interval: Option<Duration>,
        /// With --rollout: percent of 5xx answers (or failed connections) that rolls back.
        #[arg(long, value_parser = parse_percent, value_name = "PERCENT", requires = "rollout")]
        max_error_rate: Option<f64>,
        /// With --rollout: p95 latency in a step that rolls back.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "rollout")]
        max_p95: Option<Duration>,
        /// With --rollout: canary requests a step needs before it is judged.
        #[arg(long, value_name = "N", requires = "rollout")]
        min_requests: Option<u64>,
        /// How long the new backends have to pass their health checks.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "60s")]
        health_timeout: Duration,
        /// How long the old pool may take to drain (default: the service's drain_timeout).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        drain_timeout: Option<Duration>,
        /// Follow the running deploy (or show how the last one ended).
        #[arg(long, conflicts_with_all = ["backends", "pool", "rollout"])]
        watch: bool,
        /// One JSON object per line: each event, then the end.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Order a new certificate for an ACME host now; returns once it is served or failed.
    Renew {
        host: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Replace a pool's backends, like `pool set green 127.0.0.1:9012,127.0.0.1:9013` or
    /// `pool set green api-green:8000` (a host name: every address it resolves to is a backend).
    Set {
        pool: String,
        /// Addresses (IP:port) or host names with a port, comma-separated.
        #[arg(value_name = "BACKEND[,BACKEND…]")]
        backends: String,
        #[command(flatten)]
        target: Target,
        /// Apply only once every new backend passes its health check.
        #[arg(long)]
        wait: bool,
        /// How long --wait may take before giving up and changing nothing.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "wait")]
        timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Target {
    /// The service (may be left out when there is only one).
    #[arg(short = 's', long = "service", value_name = "SERVICE")]
    service: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A percentage: `10`, `12.5` or `10%`.
fn parse_percent(s: &str) -> Result<f64, String> {
    s.trim()
        .trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a percentage: use a number like 10 or 12.5"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    switchback_config::parse_duration(s).map_err(|e| e.to_string())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<switchback_config::Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("switchback: no config file: pass --config FILE");
        return Err(ExitCode::from(2));
    };
    switchback_config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Runs the proxy until it is told to stop.
fn start(config: switchback_config::Config) -> ExitCode {
    match switchback_daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchback: {e}");
            ExitCode::from(if e.is_config() { 2 } else { 1 })
        }
    }
}

#[derive(Subcommand, Debug)]
enum ImportFrom {
    /// An nginx config (its includes followed): upstreams, servers, locations with
    /// proxy_pass, headers, body limits, gzip, timeouts, TLS and the HTTPS redirect.
    Nginx {
        /// The main file, like /etc/nginx/nginx.conf.
        file: PathBuf,
    },
}

fn import_nginx(file: &Path) -> ExitCode {
    match switchback_config::nginx::import(file) {
        Ok(import) => {
            print!("{}", import.toml);
            for note in &import.untranslated {
                eprintln!("{note}");
            }
            if !import.untranslated.is_empty() {
                eprintln!(
                    "{} directive(s) not translated; check the result with `switchback check`",
                    import.untranslated.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `switchback init`: the starter config, checked, then printed or written to a new file.
fn init(starter: &switchback_config::starter::Starter, output: Option<&Path>) -> ExitCode {
    let text = starter.render();
    let name = output.unwrap_or(Path::new("switchback.toml"));
    if let Err(e) = switchback_config::parse(name, &text) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let Some(path) = output else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    match switchback_config::atomic::write_new(path, text.as_bytes(), 0o644) {
        Ok(()) => {
            eprintln!(
                "wrote {}: check it with `switchback check --config {0}`",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} exists: init never overwrites a config; remove it or choose another --output",
                path.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

fn check(path: Option<&PathBuf>) -> ExitCode {
    match load_config(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} service(s))",
                c.source.display(),
                c.services.len()
            );
            for warning in name_warnings(&c) {
                eprintln!("warning: {warning}");
            }
            // The key file may be put in place on the proxy's machine only, so not an error
            // here; `run` refuses to start without it.
            if let Some(fleet) = &c.fleet {
                if let Err(e) = switchback_daemon::fleet::read_key_file(&fleet.key_file) {
                    eprintln!("warning: fleet.key_file: {e}; `switchback run` will not start until it is fixed");
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Backends given by a host name that does not resolve here and now. Not an error: the name
/// may be a container that is not up yet, and the proxy keeps looking it up.
fn name_warnings(config: &switchback_config::Config) -> Vec<String> {
    let hosts: Vec<String> = config
        .backend_names()
        .iter()
        .filter_map(|t| t.host().map(str::to_string))
        .collect();
    if hosts.is_empty() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec!["backend names were not looked up: no runtime".into()];
    };
    let round = runtime.block_on(switchback_daemon::names::lookup(
        &config.resolver,
        &hosts,
        &Default::default(),
    ));
    let mut out = Vec::new();
    for service in &config.services {
        for pool in &service.pools {
            for target in &pool.backends {
                let Some(answer) = target.host().and_then(|h| round.answers.get(h)) else {
                    continue;
                };
                if answer.addrs.is_empty() {
                    out.push(format!(
                        "services.{}.pools.{}: {target} {}; its backends stay down until it resolves",
                        service.name,
                        pool.name,
                        answer.error.as_deref().unwrap_or("does not resolve")
                    ));
                }
            }
        }
    }
    out
}

/// The command line with the proxy's defaults in the help of the options left to it. The CLI
/// never sends them: an option not typed is left out of the request and the proxy fills it in
/// from the same constants.
fn command_line() -> clap::Command {
    use switchback_config::defaults as d;
    use switchback_config::HumanDuration;
    let default = |help: &str, value: String| format!("{help} [proxy's default: {value}]");
    let help_of = |cmd: &clap::Command, arg: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == arg)
            .and_then(|a| a.get_help())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    let with_default = |mut cmd: clap::Command, arg: &str, value: String| {
        let help = default(&help_of(&cmd, arg), value);
        cmd = cmd.mut_arg(arg, |a| a.help(help));
        cmd
    };
    let steps = d::ROLLOUT_STEPS
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Cli::command()
        .mut_subcommand("rollout", |c| {
            let c = with_default(c, "steps", steps);
            let c = with_default(
                c,
                "interval",
                HumanDuration(d::ROLLOUT_INTERVAL).to_string(),
            );
            let c = with_default(c, "max_error_rate", d::ROLLOUT_MAX_ERROR_RATE.to_string());
            let c = with_default(c, "max_p95", HumanDuration(d::ROLLOUT_MAX_P95).to_string());
            with_default(c, "min_requests", d::ROLLOUT_MIN_REQUESTS.to_string())
        })
        .mut_subcommand("switch", |c| {
            with_default(
                c,
                "drain_timeout",
                HumanDuration(d::DRAIN_TIMEOUT).to_string(),
            )
        })
        .mut_subcommand("pool", |c| {
            c.mut_subcommand("set", |c| {
                with_default(c, "timeout", HumanDuration(d::POOL_SET_WAIT).to_string())
            })
        })
}

fn main() -> ExitCode {
    switchback_certs::install_crypto_provider();
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let socket = || cli::resolve_socket(cli.socket.clone(), cli.config.clone());
    match cli.command {
        Command::Run { log_format } => {
            init_logs(log_format);
            match load_config(cli.config.as_ref()) {
                Ok(config) => start(config),
                Err(code) => code,
            }
        }
        Command::Check => check(cli.config.as_ref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command_line(),
                "switchback",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            // The release alone, not the commit: the packaged page is committed and compared.
            let command = command_line().version(env!("CARGO_PKG_VERSION"));
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Init {
            hosts,
            backends,
            backends_green,
            acme_email,
            no_tls,
            http,
            https,
            service,
            state_dir,
            output,
        } => {
            let mut starter = switchback_config::starter::Starter::new(hosts, backends);
            starter.green = backends_green;
            starter.acme = !no_tls;
            starter.acme_email = acme_email;
            starter.http = http;
            starter.https = https;
            starter.service = service;
            starter.state_dir = state_dir;
            if let Some(socket) = cli.socket {
                starter.socket = socket.display().to_string();
            }
            init(&starter, output.as_deref())
        }
        Command::Import {
            from: ImportFrom::Nginx { file },
        } => import_nginx(&file),
        Command::Demo { port } => {
            init_logs(LogFormat::Text);
            match demo::prepare(port) {
                Ok(config) => start(config),
                Err(code) => code,
            }
        }
        command => client(command, socket()),
    }
}

/// A command for a running proxy: one request over the control socket, its answer printed.
fn client(command: Command, socket: Result<PathBuf, String>) -> ExitCode {
    match command {
        Command::Run { .. }
        | Command::Demo { .. }
        | Command::Check
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Manpage
        | Command::Import { .. } => {
            unreachable!("main runs these itself")
        }
        Command::Status { target, json } => {
            let request = Request::Status {
                service: target.service,
            };
            cli::call::<StatusReply>(socket, request, json, cli::print_status)
        }
        Command::Switch {
            pool,
            target,
            force,
            wait_drain,
            drain_timeout,
            json,
        } => {
            let request = Request::Switch {
                service: target.service,
                pool,
                force,
                wait_drain,
                drain_timeout,
            };
            cli::call::<SwitchReply>(socket, request, json, cli::print_switch)
        }
        Command::Rollback {
            target,
            force,
            json,
        } => {
            let request = Request::Rollback {
                service: target.service,
                force,
            };
            cli::call::<SwitchReply>(socket, request, json, cli::print_switch)
        }
        Command::Certs { command, json } => {
            let (request, json) = match command {
                None => (Request::Certs, json),
                Some(CertsCommand::Renew { host, json: j }) => {
                    (Request::CertsRenew { host }, json || j)
                }
            };
            cli::call::<CertsReply>(socket, request, json, cli::print_certs)
        }
        Command::Canary {
            pool,
            percent,
            target,
            force,
            json,
        } => {
            let request = Request::Canary {
                service: target.service,
                pool,
                percent,
                force,
            };
            cli::call::<CanaryReply>(socket, request, json, cli::print_canary)
        }
        Command::Rollout {
            pool,
            target,
            steps,
            interval,
            max_error_rate,
            max_p95,
            min_requests,
            force,
            watch,
            abort,
            json,
        } => {
            let service = target.service;
            let request = match (watch, abort, pool) {
                (true, _, _) => Request::RolloutWatch { service },
                (_, true, _) => Request::RolloutAbort { service },
                (_, _, Some(pool)) => Request::Rollout {
                    service,
                    pool,
                    steps,
                    interval,
                    max_error_rate,
                    max_p95,
                    min_requests,
                    force,
                },
                (false, false, None) => {
                    unreachable!("clap requires POOL without --watch or --abort")
                }
            };
            // `--abort` did what it was asked when the rollout stopped.
            let exit = if abort {
                |_: &RolloutReply| ExitCode::SUCCESS
            } else {
                cli::rollout_exit
            };
            cli::call_then::<RolloutReply>(socket, request, json, cli::print_rollout, exit)
        }
        Command::Deploy {
            backends,
            target,
            pool,
            rollout,
            steps,
            interval,
            max_error_rate,
            max_p95,
            min_requests,
            health_timeout,
            drain_timeout,
            watch,
            json,
        } => {
            let service = target.service;
            let request = if watch {
                Request::DeployWatch { service }
            } else {
                Request::Deploy {
                    service,
                    pool,
                    backends,
                    rollout,
                    steps,
                    interval,
                    max_error_rate,
                    max_p95,
                    min_requests,
                    health_timeout: Some(health_timeout),
                    drain_timeout,
                }
            };
            cli::call_then::<DeployReply>(
                socket,
                request,
                json,
                cli::print_deploy,
                cli::deploy_exit,
            )
        }
        Command::ReloadCerts { json } => {
            cli::call::<CertsReply>(socket, Request::ReloadCerts, json, cli::print_certs)
        }
        Command::Upgrade { json } => {
            let path = socket.clone();
            cli::call_then::<UpgradeReply>(
                socket,
                Request::Upgrade,
                json,
                cli::print_upgrade,
                |r| match &path {
                    Ok(path) => cli::wait_serving(path, r.new_pid, json),
                    Err(_) => ExitCode::from(2),
                },
            )
        }
        Command::Reload { force, json } => {
            cli::call::<ReloadReply>(socket, Request::Reload { force }, json, cli::print_reload)
        }
        Command::Pool {
            command:
                PoolCommand::Set {
                    pool,
                    backends,
                    target,
                    wait,
                    timeout,
                    json,
                },
        } => {
            let backends = match switchback_config::parse_backend_list(&backends) {
                Ok(list) => list.iter().map(ToString::to_string).collect(),
                Err(e) => {
                    eprintln!("switchback: bad_address: {e}");
                    return ExitCode::from(1);
                }
            };
            let request = Request::PoolSet {
                service: target.service,
                pool,
                backends,
                wait,
                timeout,
            };
            cli::call::<PoolSetReply>(socket, request, json, cli::print_pool_set)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let matches = command_line()
            .try_get_matches_from(args)
            .expect("valid arguments");
        Cli::from_arg_matches(&matches).expect("a command line")
    }

    #[test]
    fn options_not_typed_are_left_to_the_proxy() {
        let Command::Rollout {
            steps,
            interval,
            max_error_rate,
            max_p95,
            min_requests,
            ..
        } = parse(&["switchback", "rollout", "green"]).command
        else {
            panic!("a rollout")
        };
        assert_eq!(
            (steps, interval, max_error_rate, max_p95, min_requests),
            (None, None, None, None, None)
        );
        let Command::Rollout {
            steps, interval, ..
        } = parse(&[
            "switchback",
            "rollout",
            "green",
            "--steps",
            "10,50,100",
            "--interval",
            "5s",
        ])
        .command
        else {
            panic!("a rollout")
        };
        assert_eq!(steps, Some(vec![10.0, 50.0, 100.0]));
        assert_eq!(interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn help_shows_the_proxys_defaults() {
        let help = command_line()
            .find_subcommand_mut("rollout")
            .expect("rollout")
            .render_help()
            .to_string();
        assert!(help.contains("[proxy's default: 5,25,50,100]"), "{help}");
        assert!(help.contains("[proxy's default: 30s]"), "{help}");
    }
}
