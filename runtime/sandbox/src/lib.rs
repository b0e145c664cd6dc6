//! Container setup that both isolation modes share.
//!
//! The host's container backend and the guest agent inside the microVM start workloads with
//! this code: it turns an OCI runtime spec into namespaces, mounts, cgroups, credentials,
//! capabilities and a seccomp filter. It has no CLI assumptions.
