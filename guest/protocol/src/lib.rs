//! Messages between twinbox's VM backend (host) and its guest agent (PID 1 in the microVM).
