//! The `portcullis` binary: wires the controller-shim (Kubernetes objects -> desired config) to
//! the data plane. Only this file knows both sides.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use portcullis_runtime::limits::Limits;
use portcullis_runtime::manifest_source::{ManifestSource, POLL_INTERVAL};
use portcullis_runtime::publish::Publisher;
use portcullis_runtime::shard::{self, DriverChoice, ShardOptions, Shards};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "mTLS-terminating Gateway API data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Translate a folder of manifests and print the statuses the controller would write.
    Check {
        /// Folder of `.yaml`/`.yml`/`.json` manifests, read as `kubectl apply -f DIR` would.
        #[arg(long)]
        manifests: PathBuf,
        /// Also serve Gateways of this `gatewayClassName`, with or without a GatewayClass object.
        #[arg(long = "gateway-class")]
        gateway_class: Option<String>,
    },
    /// Serve the Gateways of a folder of manifests; the folder is watched for changes.
    Serve {
        /// Folder of `.yaml`/`.yml`/`.json` manifests, read as `kubectl apply -f DIR` would.
        #[arg(long)]
        manifests: PathBuf,
        /// Also serve Gateways of this `gatewayClassName`, with or without a GatewayClass object.
        #[arg(long = "gateway-class")]
        gateway_class: Option<String>,
        #[command(flatten)]
        data_plane: DataPlaneArgs,
    },
}

/// Flags of the data plane, shared by every command that serves.
#[derive(Debug, Args)]
struct DataPlaneArgs {
    /// Number of shards (default: one per CPU in the process's affinity mask).
    #[arg(long)]
    shards: Option<usize>,
    /// Listen on this address only (default: all addresses, IPv6 and IPv4).
    #[arg(long = "bind-address")]
    bind_address: Option<IpAddr>,
    /// Event-loop driver.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    driver: DriverChoice,
    #[command(flatten)]
    limits: Limits,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            manifests,
            gateway_class,
        } => {
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let code = portcullis_controller_shim::check::run(
                &manifests,
                gateway_class.as_deref(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            );
            ExitCode::from(code)
        }
        Command::Serve {
            manifests,
            gateway_class,
            data_plane,
        } => {
            init_logging();
            serve_manifests(ManifestSource::new(manifests, gateway_class), data_plane)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve_manifests(mut source: ManifestSource, args: DataPlaneArgs) -> ExitCode {
    let (mut publisher, snapshots) = Publisher::new();
    // The first configuration must read cleanly: there is no last good one to keep.
    match source.poll() {
        Some(desired) => {
            publisher.publish(desired);
        }
        None => {
            error!("the manifests could not be loaded; nothing to serve");
            return ExitCode::from(2);
        }
    }
    let cores = shard::cores_from_affinity(args.shards);
    info!(shards = cores.len(), "starting shards");
    let options = ShardOptions {
        driver: args.driver,
        bind_address: args.bind_address,
        limits: args.limits,
    };
    let shards = match Shards::start(cores, options, snapshots) {
        Ok(shards) => shards,
        Err(e) => {
            error!(error = %e, "cannot start shards");
            return ExitCode::FAILURE;
        }
    };
    loop {
        std::thread::sleep(POLL_INTERVAL);
        if let Some(desired) = source.poll() {
            publisher.publish(desired);
        }
        publisher.rotate_ticket_keys_if_due();
    }
    #[allow(unreachable_code)]
    {
        drop(publisher);
        shards.join();
        ExitCode::SUCCESS
    }
}
