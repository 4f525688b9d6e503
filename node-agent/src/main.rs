//! `portcullis-node-agent`: a kubelet for the one Node of the test clusters. Pods run as local
//! processes (the image map says which program an image stands for), each pod in its own
//! network namespace on the host bridge. See the module docs of [`agent`] for the whole.

mod agent;
mod backoff;
mod container;
mod expand;
mod images;
mod ipam;
mod lb;
mod net;
mod node;
mod pod;
mod probe;
mod process;
mod spec;
mod state;
mod status;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use tracing::error;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-node-agent",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Option<RunArgs>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Kubeconfig of the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The Node this agent is.
    #[arg(long)]
    node_name: String,
    /// The host bridge the pods join (its address is the first of --pod-cidr).
    #[arg(long)]
    bridge: String,
    /// Pod IPs come from here, from .2 on (.1 is the bridge).
    #[arg(long)]
    pod_cidr: Ipv4Net,
    /// LoadBalancer Service addresses come from here, from .1 on.
    #[arg(long)]
    lb_cidr: Ipv4Net,
    /// The image map (YAML): which local program each container image stands for.
    #[arg(long)]
    images: PathBuf,
    /// Where volumes, logs and the records of what the agent made on the host live.
    #[arg(long)]
    state_dir: PathBuf,
    /// KUBERNETES_SERVICE_HOST for pods.
    #[arg(long)]
    api_server_host: String,
    /// KUBERNETES_SERVICE_PORT for pods.
    #[arg(long)]
    api_server_port: u16,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Remove the network namespaces, veth pairs, LoadBalancer addresses and mountpoints a
    /// crashed agent left (idempotent).
    Cleanup {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        bridge: String,
    },
    /// Internal: inside a pod's namespaces, bind-mount the volumes and exec the container.
    #[command(hide = true)]
    RunInPod {
        /// JSON list of binds.
        #[arg(long)]
        binds: String,
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::RunInPod {
        binds,
        workdir,
        argv,
    }) = &cli.command
    {
        // No logging setup: the container's output is the program's alone.
        let binds: Vec<container::Bind> = match serde_json::from_str(binds) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("portcullis-node-agent run-in-pod: bad --binds: {e}");
                return ExitCode::from(container::SETUP_FAILED_EXIT as u8);
            }
        };
        let e = container::run_in_pod(&binds, workdir.as_deref(), argv);
        eprintln!("portcullis-node-agent run-in-pod: cannot start {argv:?}: {e}");
        return ExitCode::from(container::SETUP_FAILED_EXIT as u8);
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Cleanup { state_dir, bridge }) => runtime
            .block_on(state::StateDir::new(state_dir).cleanup(&bridge))
            .map_err(|e| e.to_string()),
        Some(Command::RunInPod { .. }) => Ok(()),
        None => match cli.run {
            Some(args) => runtime
                .block_on(agent::run(agent::Settings {
                    kubeconfig: args.kubeconfig,
                    node_name: args.node_name,
                    bridge: args.bridge,
                    pod_cidr: args.pod_cidr,
                    lb_cidr: args.lb_cidr,
                    images: args.images,
                    state_dir: args.state_dir,
                    api_server_host: args.api_server_host,
                    api_server_port: args.api_server_port,
                }))
                .map_err(|e| e.to_string()),
            None => Err("missing arguments; see --help".to_owned()),
        },
    };
    // Connections of the LoadBalancer forwarders may still be open: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "portcullis-node-agent failed");
            ExitCode::FAILURE
        }
    }
}
