//! The `sluice` command line: run, validate and draw declarative stream pipelines.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::{LoadError, RunOptions};

mod progress_bar;

// Records are many small allocations (maps, shared strings); the system allocator spent
// about half of a run's time in malloc and free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Declarative stream-processing pipelines on timely and differential dataflow.
///
/// A pipeline file (TOML) names sources, graph nodes and sinks; sluice keeps every output
/// incrementally correct under late, repeated and out-of-order input.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line)
    /// for log collectors. Levels come from RUST_LOG (default `warn`, plus the status line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The form of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

const EXAMPLES: &str = "Examples:
  sluice run examples/quickstart/pipeline.toml
  sluice run --workers 4 examples/delivery/pipeline.toml
  sluice run --workers 2 --processes 2 --process 0 --hostfile hosts.txt pipeline.toml
  sluice validate my-pipeline.toml
  sluice graph examples/delivery/pipeline.toml | dot -Tsvg > graph.svg
  SLUICE_PUBLISH_SECRET=… sluice token --ttl 600

Exit codes: 0 success, 1 the run failed, 2 the pipeline file is invalid.
Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=sluice=debug) for more.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: to completion when all sources are bounded, else until Ctrl-C/SIGTERM.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Worker threads (overrides `workers` in the file).
        #[arg(long, short = 'w', value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// Print no summary at the end.
        #[arg(long, short = 'q')]
        quiet: bool,
        /// After Ctrl-C/SIGTERM, how long draining, flushing and the final checkpoint may take
        /// before sluice exits with status 1 anyway (the previous checkpoint stays in force).
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        stop_timeout: u64,
        /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address
        /// (`127.0.0.1:9100`; port 0 picks one, logged at info).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Log a one-line status (records in and out, dead letters, rate, output delay) every
        /// this many seconds at info level; 0: never.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        status_every: u64,
        /// When all sources are bounded, draw a progress bar on stderr: `auto` when it is a
        /// terminal, `always`, or `never`. Without a bar, the status line tells the share done
        /// (`progress_pct`) and the time left (`eta_s`), and a last one says 100 % (not with -q).
        #[arg(long, value_enum, default_value_t = progress_bar::Mode::Auto)]
        progress: progress_bar::Mode,
        /// Run as one of this many processes (timely's cluster mode): partitions and state are
        /// spread over the workers of every process. Needs --process and --hostfile.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
        processes: u16,
        /// This process's index in the cluster, from 0; process 0 writes checkpoints and serves
        /// clients.
        #[arg(long, value_name = "I", default_value_t = 0, requires = "hostfile")]
        process: u16,
        /// The cluster's addresses: one `host:port` line per process, in process order, the
        /// same file for every process.
        #[arg(long, value_name = "FILE")]
        hostfile: Option<PathBuf>,
        /// How long the processes wait for each other to connect before giving up.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        cluster_timeout: u64,
    },
    /// Check a pipeline file offline (keys, references, cycles, expressions, shapes) and
    /// report every problem with file, line, column and key path.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Print the pipeline's dataflow graph in Graphviz DOT.
    Graph {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Print an HS256 bearer token for a publish endpoint (`http-ingest`) or the messages
    /// feed, signed with the secret held in an environment variable (never on the command
    /// line, where other users of the machine could read it).
    Token {
        /// The environment variable holding the secret.
        #[arg(long, value_name = "VAR", default_value = "SLUICE_PUBLISH_SECRET")]
        secret_env: String,
        /// The token's subject (`sub`): the publisher or user it names.
        #[arg(long, default_value = "publisher")]
        sub: String,
        /// How long the token is valid, in seconds (its `exp`).
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { pipeline } => Ok(match sluice::load(&pipeline) {
            Ok(plan) => {
                println!("{}: valid ({})", pipeline.display(), plan.summary());
                ExitCode::SUCCESS
            }
            Err(e) => invalid(e),
        }),
        Command::Graph { pipeline } => Ok(match sluice::load(&pipeline) {
            Ok(plan) => {
                print!("{}", plan.dot());
                ExitCode::SUCCESS
            }
            Err(e) => invalid(e),
        }),
        Command::Token { secret_env, sub, ttl } => {
            let secret = std::env::var(&secret_env)
                .with_context(|| format!("the secret is read from ${secret_env}, which is not set"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now.saturating_add(ttl)});
            println!("{}", sluice_auth::jwt::sign(secret.as_bytes(), &claims));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            pipeline,
            workers,
            quiet,
            stop_timeout,
            admin,
            status_every,
            progress,
            processes,
            process,
            hostfile,
            cluster_timeout,
        } => {
            let plan = match sluice::load(&pipeline) {
                Ok(plan) => plan,
                Err(e) => return Ok(invalid(e)),
            };
            let cluster = match (processes, hostfile) {
                (1, None) => None,
                (_, None) => {
                    anyhow::bail!("--processes {processes} needs --hostfile with the address of every process")
                }
                (n, Some(hosts)) => {
                    let mut spec = sluice_runtime::cluster::ClusterSpec::from_hostfile(
                        &hosts,
                        usize::from(n),
                        usize::from(process),
                    )?;
                    spec.form_within = std::time::Duration::from_secs(cluster_timeout);
                    quiet_lost_peers();
                    Some(spec)
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                // A second signal while draining exits at once, as users expect of Ctrl-C.
                signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
                    .context("installing the signal handler")?;
                signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
            }
            stop_watchdog(stop.clone(), std::time::Duration::from_secs(stop_timeout));
            let started = std::time::Instant::now();
            let metrics = sluice_runtime::metrics::Metrics::new(&plan.pipeline().name);
            // Up before the run: a probe may ask while sources connect and state loads.
            let admin = admin
                .map(|addr| sluice_server::start_admin(addr, metrics.clone()))
                .transpose()
                .context("starting the admin endpoint")?;
            let progress = progress_bar::start(
                progress,
                plan.pipeline(),
                metrics.clone(),
                stop.clone(),
                status_every > 0 && !quiet,
            );
            // On a terminal the bar is the live view; status lines would only break it up.
            if status_every > 0 && !progress.draws_bar() {
                status_line(
                    metrics.clone(),
                    stop.clone(),
                    std::time::Duration::from_secs(status_every),
                    progress.clone(),
                );
            }
            let options = RunOptions {
                workers: workers.map(usize::from),
                stop,
                metrics: Some(metrics),
                cluster,
            };
            let report = sluice::run(plan, options).with_context(|| format!("running {}", pipeline.display()));
            progress.finish(report.as_ref().is_ok_and(|r| !r.stopped));
            if let Some(admin) = admin {
                admin.stop();
            }
            let report = report?;
            if !quiet {
                let _ = writeln!(std::io::stderr(), "{}", report.summary(started.elapsed()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Once a stop is requested, gives the run `limit` to drain and take its final checkpoint,
/// then exits with status 1: a stop must end even when a sink cannot flush (a broker down).
fn stop_watchdog(stop: Arc<AtomicBool>, limit: std::time::Duration) {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(limit);
        // Not `eprintln!`: with stderr closed (a log pipe gone) it would panic and the exit
        // would never happen.
        let _ = writeln!(
            std::io::stderr(),
            "error: the run did not drain within {} s of the stop request; exiting without a final \
             checkpoint (a restart resumes from the previous one)",
            limit.as_secs()
        );
        std::process::exit(1);
    });
}

/// When another process of the cluster dies, timely's network threads panic and poison the
/// channels of every worker, which panic in turn: fail-stop by design. One log line says what
/// happened instead of a backtrace per thread; other panics are reported as before.
fn quiet_lost_peers() {
    let previous = std::panic::take_hook();
    let told = AtomicBool::new(false);
    std::panic::set_hook(Box::new(move |info| {
        let message = sluice_runtime::cluster::panic_text(info.payload());
        let lost = sluice_runtime::cluster::lost_peer(&message);
        if !lost {
            previous(info);
        } else if !told.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::error!(cause = %message, "lost the connection to another process of the cluster; stopping");
        }
    }));
}

fn invalid(e: LoadError) -> ExitCode {
    match e {
        LoadError::Invalid(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let n = problems.len();
            eprintln!("{n} problem{} found; nothing was run", if n == 1 { "" } else { "s" });
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(2)
}

/// Logs the run's progress every `every` at info level until a stop is requested: a live
/// view for whoever tails the log, without a metrics stack. A bounded run's lines also tell
/// the share done and the time left, and a last line comes when it completes.
fn status_line(
    metrics: Arc<sluice_runtime::metrics::Metrics>,
    stop: Arc<AtomicBool>,
    every: std::time::Duration,
    progress: progress_bar::Progress,
) {
    std::thread::spawn(move || {
        let mut last: Option<(u64, std::time::Instant)> = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let last_one = progress.pause(every);
            let Some((report, delay)) = metrics.progress() else {
                continue;
            };
            let (read, written, dead) = (
                report.records_read(),
                report.updates_written(),
                report.dead_letters_written(),
            );
            let now = std::time::Instant::now();
            let rate = last.map_or(0.0, |(n, at)| {
                (read - n) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
            });
            last = Some((read, now));
            let (progress_pct, eta_s) = progress.status_fields();
            tracing::info!(
                target: "sluice::status",
                records_in = read,
                updates_out = written,
                dead_letters = dead,
                records_per_s = rate.round() as u64,
                output_delay_ms = delay.unwrap_or(0),
                ready = metrics.readiness().is_ok(),
                progress_pct,
                eta_s,
                "status"
            );
            if last_one {
                progress.logged_last();
                break;
            }
        }
    });
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Warnings, and the periodic status line.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sluice::status=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress_bar::log_writer);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colours only for a terminal: logs redirected to a file stay plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
