//! Kubernetes source: kube-rs watchers on Pods, Services, EndpointSlices, NetworkPolicy, KubeVirt
//! VMs and Ferrule CRDs, turned into a `config::Model` delta, with identity allocation through CRDs.
//! A source only produces model changes; it never touches a map or a socket.
//!
//! Nothing lives here yet: the Kubernetes source is built in its own issue.
