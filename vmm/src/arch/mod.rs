//! Architecture-specific guest setup. twinbox's VMM supports x86_64 only.

pub mod x86_64;
