//! Fixtures for twinbox's end-to-end tests: locating the built binaries, building test
//! images, starting a local registry and the emulated KVM host.
