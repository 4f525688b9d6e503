//! Address allocation from a CIDR: pod IPs (from .2: .1 is the bridge, the pods' gateway) and
//! LoadBalancer addresses (from .1). The lowest free address wins, so a freed one is reused.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IpamError {
    #[error("every address of {0} is in use")]
    Exhausted(Ipv4Net),
}

/// The addresses of one range handed out so far.
#[derive(Debug, Clone)]
pub struct Ipam {
    net: Ipv4Net,
    /// Addresses never handed out (the network's gateway).
    reserved: BTreeSet<Ipv4Addr>,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// Hands out the host addresses of `net` except `reserved`.
    pub fn new(net: Ipv4Net, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            net: net.trunc(),
            reserved: reserved.into_iter().collect(),
            used: BTreeSet::new(),
        }
    }

    /// The first host address of a network: the bridge's, the pods' gateway.
    pub fn gateway(net: Ipv4Net) -> Ipv4Addr {
        net.hosts().next().unwrap_or(net.network())
    }

    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let free = self
            .net
            .hosts()
            .find(|ip| !self.reserved.contains(ip) && !self.used.contains(ip))
            .ok_or(IpamError::Exhausted(self.net))?;
        self.used.insert(free);
        Ok(free)
    }

    /// Takes `ip` if it is a free address of the range; whether it did.
    pub fn claim(&mut self, ip: Ipv4Addr) -> bool {
        let host = self.net.contains(&ip) && ip != self.net.network() && ip != self.net.broadcast();
        host && !self.reserved.contains(&ip) && self.used.insert(ip)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pods_start_after_the_gateway_and_reuse_freed_addresses() {
        let pods = net("10.244.0.0/24");
        let gateway = Ipam::gateway(pods);
        assert_eq!(gateway, Ipv4Addr::new(10, 244, 0, 1));
        let mut ipam = Ipam::new(pods, [gateway]);
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 244, 0, 3)));
        ipam.release(Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 244, 0, 4)));
    }

    #[test]
    fn load_balancers_start_at_one_and_the_range_runs_out() {
        let mut ipam = Ipam::new(net("10.245.0.0/30"), []);
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 245, 0, 1)));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 245, 0, 2)));
        // .0 is the network, .3 the broadcast address.
        assert_eq!(
            ipam.allocate(),
            Err(IpamError::Exhausted(net("10.245.0.0/30")))
        );
    }

    #[test]
    fn claims_take_free_host_addresses_only() {
        let mut ipam = Ipam::new(net("10.245.0.0/24"), []);
        assert!(ipam.claim(Ipv4Addr::new(10, 245, 0, 9)));
        assert!(!ipam.claim(Ipv4Addr::new(10, 245, 0, 9)), "taken");
        assert!(!ipam.claim(Ipv4Addr::new(10, 245, 0, 0)), "the network");
        assert!(!ipam.claim(Ipv4Addr::new(10, 245, 0, 255)), "broadcast");
        assert!(!ipam.claim(Ipv4Addr::new(10, 246, 0, 1)), "outside");
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 245, 0, 1)));
    }

    #[test]
    fn a_cidr_with_host_bits_is_its_network() {
        let mut ipam = Ipam::new(net("10.245.0.77/24"), []);
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(10, 245, 0, 1)));
    }
}
