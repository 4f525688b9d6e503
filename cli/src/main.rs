//! The `portcullis` binary: wires the config sources (a folder of manifests through
//! `portcullis-translate`, or the API server through `portcullis-controller`) to the data plane
//! (`portcullis-runtime`). Only this crate knows both sides.

mod kube_source;
mod manifest_source;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use portcullis_core::desired::ObjectRef;
use portcullis_runtime::admin::{self, AdminAddresses, DEFAULT_ADMIN_ADDRESS};
use portcullis_runtime::demo::{DemoFolder, GUIDE_GATEWAY_CLASS};
use portcullis_runtime::limits::{Limits, parse_duration};
use portcullis_runtime::logging::{self, LogFormat};
use portcullis_runtime::serve::ServeOptions;
use portcullis_runtime::shard::{DriverChoice, ShardOptions};
use portcullis_runtime::{echo, serve};
use tracing::error;

use crate::kube_source::KubeSource;
use crate::manifest_source::ManifestSource;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "mTLS-terminating Gateway API data plane"
)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    /// Serve the Gateways of a folder of manifests (watched for changes), or with `--kube` one
    /// Gateway from the API server.
    Serve {
        /// Folder of `.yaml`/`.yml`/`.json` manifests, read as `kubectl apply -f DIR` would.
        #[arg(long, required_unless_present = "kube")]
        manifests: Option<PathBuf>,
        /// Also serve Gateways of this `gatewayClassName`, with or without a GatewayClass object.
        #[arg(long = "gateway-class", conflicts_with = "kube")]
        gateway_class: Option<String>,
        /// Take the configuration from the API server (kubeconfig or in-cluster config).
        #[arg(long, requires = "gateway", conflicts_with = "manifests")]
        kube: bool,
        /// With `--kube`: the Gateway to serve, `NAMESPACE/NAME`.
        #[arg(long, requires = "kube", value_parser = parse_gateway)]
        gateway: Option<ObjectRef>,
        #[command(flatten)]
        data_plane: DataPlaneArgs,
    },
    /// Run the Kubernetes controller: statuses, and a data plane per Gateway of our classes.
    Controller {
        /// Configuration file, YAML or JSON (see docs/kubernetes-mode.md); defaults without.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the user guide's mTLS gateway locally: certificates, manifests, an echo backend.
    Demo {
        /// Folder for the certificates and manifests (kept between runs).
        #[arg(long, default_value = "portcullis-demo")]
        dir: PathBuf,
        #[command(flatten)]
        data_plane: DataPlaneArgs,
    },
    /// Run the built-in httpbin-like echo backend (for benchmarks).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
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
    /// Admin endpoint for probes and scrapes (`/healthz`, `/readyz`, `/metrics`); "off"
    /// disables it.
    #[arg(long, default_value = DEFAULT_ADMIN_ADDRESS, value_parser = parse_admin)]
    admin: AdminAddress,
    /// Admin endpoint for `/config` (the whole setup: keep it on loopback); "off" disables it.
    /// The same address as `--admin` serves every path there. Default: with the probes when
    /// `--admin` is a loopback address, else 127.0.0.1:9903.
    #[arg(long, value_parser = parse_admin)]
    admin_config: Option<AdminAddress>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before connections are closed.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    drain_timeout: Duration,
    #[command(flatten)]
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct AdminAddress(Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<AdminAddress, String> {
    if s == "off" {
        return Ok(AdminAddress(None));
    }
    s.parse()
        .map(|a| AdminAddress(Some(a)))
        .map_err(|e| format!("{s:?}: {e} (use ADDRESS:PORT or \"off\")"))
}

/// `NAMESPACE/NAME`.
fn parse_gateway(s: &str) -> Result<ObjectRef, String> {
    match s.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(ObjectRef::new(namespace, name))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
    }
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
            let code = portcullis_translate::check::run(
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
            kube: _,
            gateway,
            data_plane,
        } => {
            logging::init(cli.log_format);
            match (gateway, manifests) {
                (Some(gateway), _) => match KubeSource::connect(gateway) {
                    Ok(source) => serve::serve(source, data_plane.into_options()),
                    Err(e) => {
                        error!(error = %e, "cannot watch the API server");
                        ExitCode::FAILURE
                    }
                },
                (None, Some(manifests)) => serve::serve(
                    ManifestSource::new(manifests, gateway_class),
                    data_plane.into_options(),
                ),
                // clap requires one of the two.
                (None, None) => ExitCode::from(2),
            }
        }
        Command::Controller { config } => {
            logging::init(cli.log_format);
            ExitCode::from(portcullis_controller::controller::main(config.as_deref()))
        }
        Command::Demo { dir, data_plane } => {
            logging::init(cli.log_format);
            run_demo(&dir, data_plane)
        }
        Command::Echo { listen } => {
            logging::init(cli.log_format);
            match echo::run_blocking(listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, %listen, "echo backend failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

impl DataPlaneArgs {
    fn into_options(self) -> ServeOptions {
        ServeOptions {
            shard_count: self.shards,
            shard: ShardOptions {
                driver: self.driver,
                bind_address: self.bind_address,
                limits: self.limits,
            },
            admin: AdminAddresses {
                probes: self.admin.0,
                config: self
                    .admin_config
                    .map_or_else(|| admin::default_config_address(self.admin.0), |a| a.0),
            },
            drain_timeout: self.drain_timeout,
        }
    }
}

fn run_demo(dir: &std::path::Path, data_plane: DataPlaneArgs) -> ExitCode {
    let echo_addr = match echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0))) {
        Ok(addr) => addr,
        Err(e) => {
            error!(error = %e, "cannot start the echo backend");
            return ExitCode::FAILURE;
        }
    };
    let folder = match DemoFolder::prepare(dir, echo_addr) {
        Ok(folder) => folder,
        Err(e) => {
            error!(error = %e, dir = %dir.display(), "cannot write the demo folder");
            return ExitCode::FAILURE;
        }
    };
    let source = ManifestSource::new(folder.dir.clone(), Some(GUIDE_GATEWAY_CLASS.to_owned()));
    serve::serve_with(source, data_plane.into_options(), |report| {
        report.log();
        println!("{}", folder.instructions(report));
    })
}

#[cfg(test)]
mod tests {
    use portcullis_controller::config::{DEFAULT_ADMIN_PORT, DEFAULT_CONTROLLER_ADMIN_ADDRESS};
    use portcullis_runtime::admin::{DEFAULT_ADMIN_ADDRESS, DEFAULT_ADMIN_CONFIG_ADDRESS};
    use std::net::SocketAddr;

    fn address(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }

    /// The data plane's `/config` port is apart from its probe port (the one the controller
    /// writes into pods) and from the controller's own admin port.
    #[test]
    fn config_defaults_to_loopback_on_a_port_of_its_own() {
        let config = address(DEFAULT_ADMIN_CONFIG_ADDRESS);
        let probes = address(DEFAULT_ADMIN_ADDRESS);
        let controller = address(DEFAULT_CONTROLLER_ADMIN_ADDRESS);
        assert!(config.is_some_and(|a| a.ip().is_loopback()), "{config:?}");
        let port = config.map(|a| a.port());
        assert_ne!(port, probes.map(|a| a.port()), "the probe address");
        assert_ne!(port, Some(DEFAULT_ADMIN_PORT), "the probe port in pods");
        assert_ne!(port, controller.map(|a| a.port()), "the controller's admin");
    }
}
