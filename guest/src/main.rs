//! twinbox's guest agent: PID 1 inside the microVM.

fn main() {
    eprintln!("twinbox-agent: not implemented yet");
    std::process::exit(1);
}
