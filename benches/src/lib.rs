//! Shared helpers for twinbox's benchmark binaries.
