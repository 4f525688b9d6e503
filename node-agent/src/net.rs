//! Pod networking with iproute2: a network namespace per pod, joined to the host bridge by a
//! veth pair, and LoadBalancer addresses on the bridge.
//!
//! The `ip` command is the interface (as CNI's bridge plugin does with netlink): every step is
//! one command whose failure names the command and what it printed. Teardown steps ignore
//! "does not exist", so they can run again after a crash (the `cleanup` subcommand).

use std::net::Ipv4Addr;

use thiserror::Error;
use tokio::process::Command;

/// The pod's end of the veth pair, inside its namespace.
const POD_INTERFACE: &str = "eth0";
/// Characters of the pod UID in the namespace and host-side veth names (interface names have
/// at most 15 characters).
const UID_PREFIX_LEN: usize = 8;

/// An `ip` command that failed: the host's problem (missing bridge, no permission, ...).
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// `pcl-<first 8 characters of the pod UID>`.
pub fn netns_name(uid: &str) -> String {
    format!("pcl-{}", uid_prefix(uid))
}

/// The host's end of the pod's veth pair.
pub fn host_veth_name(uid: &str) -> String {
    format!("pclv{}", uid_prefix(uid))
}

fn uid_prefix(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(UID_PREFIX_LEN)
        .collect::<String>()
        .to_ascii_lowercase()
}

async fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let output = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| NetError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs a teardown step; "already gone" is success.
async fn ip_gone_ok(args: &[&str]) -> Result<(), NetError> {
    match ip(args).await {
        Ok(_) => Ok(()),
        Err(NetError::Failed { stderr, .. })
            if stderr.contains("No such file")
                || stderr.contains("Cannot find device")
                || stderr.contains("does not exist")
                || stderr.contains("Cannot assign requested address")
                || stderr.contains("not found") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What joins one pod to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: String,
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// Creates the namespace, the veth pair on `bridge`, the pod's address, `lo` and the default
/// route. A half-made network is the caller's to tear down.
pub async fn setup_pod(net: &PodNetwork, bridge: &str) -> Result<(), NetError> {
    let ns = net.netns.as_str();
    let veth = net.host_veth.as_str();
    let address = format!("{}/{}", net.ip, net.prefix_len);
    let gateway = net.gateway.to_string();
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link",
        "add",
        veth,
        "type",
        "veth",
        "peer",
        "name",
        POD_INTERFACE,
        "netns",
        ns,
    ])
    .await?;
    ip(&["link", "set", veth, "master", bridge, "up"]).await?;
    ip(&["-n", ns, "addr", "add", &address, "dev", POD_INTERFACE]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", ns, "link", "set", POD_INTERFACE, "up"]).await?;
    ip(&["-n", ns, "route", "add", "default", "via", &gateway]).await?;
    Ok(())
}

/// The processes in a namespace (the pod's containers and anything they started).
pub async fn netns_pids(ns: &str) -> Vec<i32> {
    match ip(&["netns", "pids", ns]).await {
        Ok(out) => out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills whatever still runs in the namespace, then removes the veth pair and the namespace.
pub async fn teardown_pod(netns: &str, host_veth: &str) -> Result<(), NetError> {
    for pid in netns_pids(netns).await {
        crate::process::kill(pid, crate::process::Signal::Kill);
    }
    ip_gone_ok(&["link", "del", host_veth]).await?;
    ip_gone_ok(&["netns", "del", netns]).await?;
    Ok(())
}

/// Adds a LoadBalancer address (a /32) to the bridge.
pub async fn add_address(bridge: &str, address: Ipv4Addr) -> Result<(), NetError> {
    let cidr = format!("{address}/32");
    match ip(&["addr", "add", &cidr, "dev", bridge]).await {
        Err(NetError::Failed { stderr, .. }) if stderr.contains("File exists") => Ok(()),
        other => other.map(drop),
    }
}

pub async fn remove_address(bridge: &str, address: Ipv4Addr) -> Result<(), NetError> {
    ip_gone_ok(&["addr", "del", &format!("{address}/32"), "dev", bridge]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let uid = "3F2b9c1d-aaaa-bbbb-cccc-0123456789ab";
        assert_eq!(netns_name(uid), "pcl-3f2b9c1d");
        assert_eq!(host_veth_name(uid), "pclv3f2b9c1d");
        assert!(host_veth_name(uid).len() <= 15);
    }
}
