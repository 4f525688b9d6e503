//! portcullis-soak: `portcullis serve` under a mixed load while its certificates, CA bundle
//! and routes rotate and its backends are killed; prints what was sent, what came back and
//! whether the gateway leaked. See `portcullis_loadtest::soak`; run it with `scripts/soak`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use portcullis_loadtest::soak::{self, Options, load::Mix};
use portcullis_runtime::limits::parse_duration;

/// Exit status when the soak ran and found a problem (the report says which).
const EXIT_FAILED: u8 = 1;
/// Exit status when the soak could not run.
const EXIT_SETUP: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-soak",
    version,
    about = "Soak the real gateway: mixed load under certificate, CA, route and backend churn"
)]
struct Cli {
    /// The `portcullis` binary. Default: the one next to this program.
    #[arg(long)]
    portcullis: Option<PathBuf>,
    /// How long the load runs after the warm-up (30s, 2m, 1h).
    #[arg(long, value_parser = parse_duration, default_value = "30m")]
    duration: Duration,
    /// Load before the first memory and descriptor sample (its counts are reported too).
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    warmup: Duration,
    /// How often the server certificate, the CA bundle and the routes change.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    rotate_every: Duration,
    /// How often an echo backend is killed (the two take turns).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    backend_kill_every: Duration,
    /// How long a killed backend stays down (less than --backend-kill-every).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    backend_down_for: Duration,
    /// The gateway's --request-head-timeout (how long each slowloris connection lasts).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    request_head_timeout: Duration,
    /// Connect, handshake and response timeout of every client attempt.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    client_timeout: Duration,
    #[arg(long, default_value_t = 4)]
    keep_alive_clients: usize,
    #[arg(long, default_value_t = 4)]
    handshake_clients: usize,
    #[arg(long, default_value_t = 4)]
    slowloris_clients: usize,
    #[arg(long, default_value_t = 1)]
    reset_clients: usize,
    #[arg(long, default_value_t = 1)]
    oversized_clients: usize,
    /// Clients of each invalid certificate (unknown CA, expired).
    #[arg(long, default_value_t = 1)]
    invalid_cert_clients: usize,
    /// How often to print a progress line.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    progress_every: Duration,
    /// Work folder (certificates, manifests, logs). Default: a temporary one, removed when the
    /// soak passes.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.backend_down_for >= cli.backend_kill_every {
        eprintln!(
            "portcullis-soak: --backend-down-for must be shorter than --backend-kill-every, so that one backend is always up"
        );
        return ExitCode::from(EXIT_SETUP);
    }
    let portcullis = match cli.portcullis.clone().or_else(sibling_portcullis) {
        Some(path) => path,
        None => {
            eprintln!("portcullis-soak: give --portcullis PATH");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let options = Options {
        portcullis,
        duration: cli.duration,
        warmup: cli.warmup,
        rotate_every: cli.rotate_every,
        backend_kill_every: cli.backend_kill_every,
        backend_down_for: cli.backend_down_for,
        request_head_timeout: cli.request_head_timeout,
        client_timeout: cli.client_timeout,
        mix: Mix {
            keep_alive: cli.keep_alive_clients,
            handshake_storm: cli.handshake_clients,
            slowloris: cli.slowloris_clients,
            mid_request_reset: cli.reset_clients,
            oversized_head: cli.oversized_clients,
            invalid_cert: cli.invalid_cert_clients,
        },
        progress_every: cli.progress_every,
        work_dir: cli.work_dir.clone(),
    };
    match soak::run(&options) {
        Ok(outcome) => {
            if cli.json {
                match serde_json::to_string_pretty(&outcome.report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("portcullis-soak: report: {e}"),
                }
            } else {
                print!("{}", outcome.report);
            }
            if outcome.report.passed {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "portcullis-soak: logs and manifests kept in {}",
                    outcome.work_dir.display()
                );
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("portcullis-soak: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}

/// `portcullis` in this program's folder (cargo builds both into one).
fn sibling_portcullis() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.with_file_name("portcullis");
    path.is_file().then_some(path)
}
