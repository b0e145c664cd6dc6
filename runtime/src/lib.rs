//! twinbox: one OCI frontend, two isolation backends.
//!
//! The same image runs either as a namespaced process (the container backend) or inside a
//! KVM microVM booted by twinbox's own VMM (the VM backend). This crate holds the shared
//! frontend: the image store, bundle generation, both backends behind one trait, the CLI and
//! the compare tooling.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod config;
pub mod container;
pub mod engine;
pub mod image;
pub mod lifecycle;
pub mod logging;
pub mod process;
pub mod spec;
pub mod state;
pub mod vm;
pub mod vm_boot;
