//! The `sluice` command line: run, validate and draw declarative stream pipelines.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::{LoadError, RunOptions};

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
}

const EXAMPLES: &str = "Examples:
  sluice run examples/quickstart/pipeline.toml
  sluice run --workers 4 examples/delivery/pipeline.toml
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
    init_logging();
    let cli = Cli::parse();
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
        } => {
            let plan = match sluice::load(&pipeline) {
                Ok(plan) => plan,
                Err(e) => return Ok(invalid(e)),
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
            let options = RunOptions {
                workers: workers.map(usize::from),
                stop,
            };
            let report = sluice::run(plan, options).with_context(|| format!("running {}", pipeline.display()))?;
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a terminal: logs redirected to a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
