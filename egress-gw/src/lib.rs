//! IPv6-first egress gateway: egress policy → datapath map plan (SNAT66, SNAT44, NAT64), egress
//! address allocation and gateway selection with failover. Pure planning; the appliance applies it.
//!
//! Nothing lives here yet: the egress gateway is built in its own issue.
