//! `twinbox-vmm`: the VM backend's own processes, started in the VMM's jail by `create` (the
//! VM's init: `twinbox-vmm init CONFIG`) and `exec` (`twinbox-vmm exec-relay CONFIG`). A
//! binary of their own holds only the code they run, not the whole CLI: every VM maps and
//! touches less host memory, and the process starts faster.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(twinbox::vm::vmm_process_main(&args));
}
