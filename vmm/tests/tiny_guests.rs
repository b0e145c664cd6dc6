//! Boots tiny 64-bit guests, assembled here with nasm, on this machine's /dev/kvm and
//! checks what they observe and what the VMM records: the boot path (ELF loading,
//! registers, page tables, zero page), serial output, the boot timer, MMIO dispatch, i8042
//! reset, vCPU kicks, and virtio-mmio negotiation down to a real virtio-blk request.

use std::path::PathBuf;
use std::time::Duration;

use vmm::guest_image::{assemble, elf_image};
use vmm::{ConsoleConfig, DiskConfig, ExitReason, VmConfig, Vmm, VmmError};

const LOAD_ADDRESS: u64 = 0x20_0000;

/// Assembly macros shared by the guests: print a character on COM1, and reset through the
/// i8042 (which ends the VM as a reboot).
const PRELUDE: &str = r#"
bits 64
org 0x200000
%macro putc 1
    mov dx, 0x3f8
    mov al, %1
    out dx, al
%endmacro
%macro reset 0
    mov al, 0xfe
    out 0x64, al
%%spin:
    jmp %%spin
%endmacro
; Numbered checks: `step` before each, `jcc fail` on failure prints 'a' + step number.
%macro step 0
    inc r15
%endmacro
    xor r15, r15
    jmp main
fail:
    mov dx, 0x3f8
    mov al, r15b
    add al, 'a'
    out dx, al
    reset
main:
"#;

struct Guest {
    dir: tempfile::TempDir,
    kernel: PathBuf,
}

impl Guest {
    fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let code = assemble(&format!("{PRELUDE}\n{body}"), dir.path()).unwrap();
        let kernel = dir.path().join("guest.elf");
        std::fs::write(&kernel, elf_image(LOAD_ADDRESS, &code)).unwrap();
        Self { dir, kernel }
    }

    fn console_path(&self) -> PathBuf {
        self.dir.path().join("console.out")
    }

    fn config(&self) -> VmConfig {
        let mut config = VmConfig::new(&self.kernel);
        config.mem_size = 64 << 20;
        config.console = ConsoleConfig::File(self.console_path());
        config
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.console_path()).unwrap_or_default()
    }
}

fn run(config: VmConfig) -> Result<vmm::VmExit, VmmError> {
    Vmm::build(config)?.run()
}

#[test]
fn serial_output_and_i8042_reset() {
    let guest = Guest::new("putc 'h'\nputc 'i'\nreset");
    let exit = run(guest.config()).unwrap();
    assert_eq!(exit.reason, ExitReason::Reboot);
    assert_eq!(guest.console(), "hi");
    assert_eq!(exit.boot_time, None);
}

#[test]
fn boot_path_registers_zero_page_and_page_tables() {
    let guest = Guest::new(
        r#"
    step
    cmp rsi, 0x7000             ; RSI points at the zero page
    jne fail
    step
    cmp dword [rsi + 0x202], 0x53726448   ; "HdrS"
    jne fail
    step
    cmp dword [rsi + 0x228], 0x20000      ; cmd_line_ptr
    jne fail
    step
    cmp dword [0x20000], 'rebo'           ; the default command line
    jne fail
    step
    cmp byte [rsi + 0x1e8], 2             ; e820 entries
    jne fail
    step
    mov rax, cr0
    bt rax, 31                            ; paging
    jnc fail
    step
    mov rax, cr4
    bt rax, 5                             ; PAE
    jnc fail
    step
    mov ecx, 0xc0000080
    rdmsr
    bt eax, 10                            ; EFER.LMA
    jnc fail
    step
    mov rax, 0x1122334455667788           ; identity map reaches 48 MiB
    mov [0x3000000], rax
    cmp [0x3000000], rax
    jne fail
    step
    mov eax, 1
    cpuid
    bt ecx, 31                            ; hypervisor bit
    jnc fail
    step
    shr ebx, 24                           ; APIC id 0
    jnz fail
    step
    cmp dword [0x9fc00], '_MP_'           ; MP table
    jne fail
    putc 'K'
    reset
"#,
    );
    let exit = run(guest.config()).unwrap();
    assert_eq!(guest.console(), "K", "a letter names the failed check");
    assert_eq!(exit.reason, ExitReason::Reboot);
}

#[test]
fn boot_timer_records_the_guest_mark() {
    let guest = Guest::new("mov rbx, 0xd0000000\nmov byte [rbx], 123\nputc 'T'\nreset");
    let exit = run(guest.config()).unwrap();
    assert_eq!(guest.console(), "T");
    let boot = exit
        .boot_time
        .expect("the guest wrote the boot-timer magic");
    assert!(boot <= exit.run_time);
}

#[test]
fn unclaimed_mmio_and_ports_read_as_ones() {
    let guest = Guest::new(
        r#"
    ; (addresses above 2 GiB go through a register: a 32-bit displacement is sign-extended)
    mov rbx, 0xd0800000
    step
    mov eax, [rbx]              ; in the MMIO gap, no device
    cmp eax, 0xffffffff
    jne fail
    step
    mov eax, [0x8000000]        ; beyond the 64 MiB of RAM
    cmp eax, 0xffffffff
    jne fail
    step
    mov dword [rbx], 1          ; ignored
    in al, 0x71                 ; no RTC
    cmp al, 0xff
    jne fail
    step
    mov rbx, 0xd0000000
    mov eax, [rbx]              ; the boot timer reads zero
    test eax, eax
    jnz fail
    putc 'M'
    reset
"#,
    );
    run(guest.config()).unwrap();
    assert_eq!(guest.console(), "M");
}

/// A polling virtio-blk driver for the first virtio-mmio slot: `blk_setup` negotiates and
/// starts the device (checking the identification registers), `blk_read_first s, "TEXT"`
/// reads sector `s` as the queue's first request and checks that it starts with TEXT.
const BLK_DRIVER: &str = r#"
DESC  equ 0x300000
AVAIL equ 0x301000
USED  equ 0x302000
%macro blk_setup 0
    mov rbx, 0xd0001000
    step
    cmp dword [rbx], 0x74726976      ; magic "virt"
    jne fail
    step
    cmp dword [rbx + 0x04], 2        ; version 2
    jne fail
    step
    cmp dword [rbx + 0x08], 2        ; virtio-blk
    jne fail
    mov dword [rbx + 0x70], 1        ; ACKNOWLEDGE
    mov dword [rbx + 0x70], 3        ; DRIVER
    step
    mov dword [rbx + 0x14], 1
    mov eax, [rbx + 0x10]
    test eax, 1                       ; VERSION_1 offered
    jz fail
    mov dword [rbx + 0x24], 1
    mov dword [rbx + 0x20], 1        ; accept VERSION_1
    mov dword [rbx + 0x24], 0
    mov dword [rbx + 0x20], 0
    mov dword [rbx + 0x70], 11       ; FEATURES_OK
    step
    test dword [rbx + 0x70], 8
    jz fail
    mov dword [rbx + 0x30], 0
    step
    cmp dword [rbx + 0x34], 256      ; QueueNumMax
    jne fail
    mov dword [rbx + 0x38], 8
    mov dword [rbx + 0x80], DESC
    mov dword [rbx + 0x84], 0
    mov dword [rbx + 0x90], AVAIL
    mov dword [rbx + 0x94], 0
    mov dword [rbx + 0xa0], USED
    mov dword [rbx + 0xa4], 0
    mov dword [rbx + 0x44], 1
    mov dword [rbx + 0x70], 15       ; DRIVER_OK
    step
    test dword [rbx + 0x70], 0x40    ; no DEVICE_NEEDS_RESET
    jnz fail
%endmacro
%macro blk_read_first 2
    ; A read of sector %1: header, 512-byte buffer, status byte.
    mov dword [0x310000], 0
    mov dword [0x310004], 0
    mov qword [0x310008], %1
    mov qword [DESC], 0x310000
    mov dword [DESC + 8], 16
    mov word [DESC + 12], 1
    mov word [DESC + 14], 1
    mov qword [DESC + 16], 0x311000
    mov dword [DESC + 24], 512
    mov word [DESC + 28], 3
    mov word [DESC + 30], 2
    mov qword [DESC + 32], 0x312000
    mov dword [DESC + 40], 1
    mov word [DESC + 44], 2
    mov byte [0x312000], 0xff
    mov word [AVAIL], 1               ; no interrupt wanted: we poll
    mov word [AVAIL + 4], 0
    mfence
    mov word [AVAIL + 2], 1
    mfence
    mov dword [rbx + 0x50], 0        ; notify (caught by the ioeventfd)
    step
    mov rcx, 0x40000000
%%wait:
    cmp word [USED + 2], 1
    je %%done
    pause
    dec rcx
    jnz %%wait
    jmp fail
%%done:
    step
    cmp byte [0x312000], 0            ; VIRTIO_BLK_S_OK
    jne fail
    step
    mov rax, %2
    cmp [0x311000], rax
    jne fail
    step
    cmp dword [USED + 8], 513         ; used length: data + status
    jne fail
%endmacro
"#;

/// A raw disk image of `sectors` sectors, each starting with `SECTOR-<n>`.
fn disk_image(path: &std::path::Path, sectors: usize) -> PathBuf {
    let mut image = vec![0u8; sectors * 512];
    for (index, sector) in image.chunks_mut(512).enumerate() {
        let label = format!("SECTOR-{index}");
        sector[..label.len()].copy_from_slice(label.as_bytes());
    }
    std::fs::write(path, &image).unwrap();
    path.to_path_buf()
}

#[test]
fn virtio_mmio_negotiation_and_a_block_read() {
    let guest = Guest::new(&format!(
        r#"{BLK_DRIVER}
    blk_setup
    step
    cmp qword [rbx + 0x100], 2       ; capacity: 2 sectors
    jne fail
    blk_read_first 1, 'SECTOR-1'
    putc 'B'
    reset
"#
    ));
    let mut config = guest.config();
    config.disks.push(DiskConfig {
        path: disk_image(&guest.dir.path().join("disk.img"), 2),
        read_only: true,
    });
    let exit = run(config).unwrap();
    assert_eq!(guest.console(), "B", "a letter names the failed check");
    assert_eq!(exit.reason, ExitReason::Reboot);
}

#[test]
fn smp_guest_sees_its_topology_and_idle_aps_are_stopped() {
    let guest = Guest::new(
        r#"
    step
    mov eax, 1
    cpuid
    shr ebx, 16
    and ebx, 0xff
    cmp ebx, 2                  ; two logical processors
    jne fail
    putc 'S'
    reset
"#,
    );
    let mut config = guest.config();
    config.vcpus = 2;
    let exit = run(config).unwrap();
    assert_eq!(guest.console(), "S");
    assert_eq!(exit.reason, ExitReason::Reboot);
}

#[test]
fn a_spinning_guest_is_stopped_by_its_owner() {
    let guest = Guest::new("putc 'R'\n.spin:\n jmp .spin");
    let vmm = Vmm::build(guest.config()).unwrap();
    let handle = vmm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.stop();
    });
    let exit = vmm.run().unwrap();
    stopper.join().unwrap();
    assert_eq!(exit.reason, ExitReason::Stopped);
    assert_eq!(guest.console(), "R");
}

#[test]
fn bad_configurations_fail_before_running() {
    let guest = Guest::new("reset");
    let mut config = guest.config();
    config.kvm_device = PathBuf::from("/nonexistent/kvm");
    let error = run(config).unwrap_err();
    assert!(
        error.to_string().contains("this host has no KVM"),
        "{error}"
    );

    let mut config = guest.config();
    config.vcpus = 0;
    assert!(matches!(run(config), Err(VmmError::Config(_))));

    let mut config = guest.config();
    config.kernel = guest.dir.path().join("missing");
    assert!(matches!(run(config), Err(VmmError::Load(_))));

    let mut config = guest.config();
    let big = guest.dir.path().join("big.cpio");
    std::fs::write(&big, vec![0u8; 65 << 20]).unwrap();
    config.initrd = Some(big);
    let error = run(config).unwrap_err();
    assert!(error.to_string().contains("does not fit"), "{error}");

    let mut config = guest.config();
    config.disks.push(DiskConfig {
        path: guest.dir.path().join("no-such-disk.img"),
        read_only: false,
    });
    assert!(matches!(run(config), Err(VmmError::Block(_))));
}

/// Counts to 100000 in a register and in memory, keeps a value and the TSC, asks for a
/// snapshot, then prints 'R' and checks that everything is intact ('K').
const COUNTING_GUEST: &str = r#"
    xor rbx, rbx
.count:
    inc rbx
    mov [0x300000], rbx
    cmp rbx, 100000
    jne .count
    mov r12, 0x1122334455667788
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r13, rax
    putc 'S'
    mov rax, 0xd0000000
    mov byte [rax], 0x73        ; ask for a snapshot
    putc 'R'
    step
    cmp rbx, 100000
    jne fail
    step
    cmp qword [0x300000], 100000
    jne fail
    step
    mov rax, 0x1122334455667788
    cmp r12, rax
    jne fail
    step
    rdtsc                       ; the TSC goes on from where it was
    shl rdx, 32
    or rax, rdx
    cmp rax, r13
    jb fail
    putc 'K'
    reset
"#;

/// A snapshot directory inside the guest's temporary directory.
fn snapshot_dir(guest: &Guest) -> PathBuf {
    guest.dir.path().join("snapshot")
}

/// A configuration that restores `guest`'s snapshot, with its console in `console`.
fn restore_config(guest: &Guest, console: &str) -> (VmConfig, PathBuf) {
    let mut config = guest.config();
    // The kernel is in the snapshot's memory: the path is not even opened.
    config.kernel = guest.dir.path().join("no-such-kernel");
    config.restore_from = Some(snapshot_dir(guest));
    let console = guest.dir.path().join(console);
    config.console = ConsoleConfig::File(console.clone());
    (config, console)
}

#[test]
fn a_snapshotted_guest_resumes_with_its_state_intact() {
    let guest = Guest::new(COUNTING_GUEST);
    let mut config = guest.config();
    config.vcpus = 2;
    config.snapshot_to = Some(snapshot_dir(&guest));
    let exit = run(config).unwrap();
    assert_eq!(exit.reason, ExitReason::Snapshotted);
    assert_eq!(guest.console(), "S", "the guest stopped at its request");
    let dir = snapshot_dir(&guest);
    assert!(dir.join(vmm::snapshot::COMPLETE_MARKER).exists());
    let memory = std::fs::metadata(dir.join(vmm::snapshot::MEMORY_FILE)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(memory.len(), 64 << 20);
    assert!(
        memory.blocks() * 512 < 1 << 20,
        "guest RAM is saved sparse: {} bytes allocated",
        memory.blocks() * 512
    );

    // Restored twice: a snapshot is a template.
    for round in 0..2 {
        let (mut config, console) = restore_config(&guest, &format!("restored-{round}.out"));
        config.vcpus = 2;
        let vmm = Vmm::build(config).unwrap();
        let times = vmm.boot_times();
        let exit = vmm.run().unwrap();
        assert_eq!(
            std::fs::read_to_string(&console).unwrap(),
            "RK",
            "a letter after R names the failed check"
        );
        assert_eq!(exit.reason, ExitReason::Reboot);
        assert!(
            times.entered().is_some(),
            "the first guest entry is recorded"
        );
    }
}

#[test]
fn without_a_snapshot_directory_the_request_is_ignored() {
    let guest = Guest::new(COUNTING_GUEST);
    let exit = run(guest.config()).unwrap();
    assert_eq!(exit.reason, ExitReason::Reboot);
    assert_eq!(guest.console(), "SRK");
    assert!(!snapshot_dir(&guest).exists());
}

#[test]
fn a_snapshot_restores_only_into_the_same_layout() {
    let guest = Guest::new(COUNTING_GUEST);
    let (config, _) = restore_config(&guest, "never.out");
    let error = run(config).unwrap_err().to_string();
    assert!(
        error.contains("not a complete snapshot")
            && error.contains("remove the snapshot directory"),
        "{error}"
    );

    let mut config = guest.config();
    config.snapshot_to = Some(snapshot_dir(&guest));
    assert_eq!(run(config).unwrap().reason, ExitReason::Snapshotted);
    let (mut config, _) = restore_config(&guest, "never.out");
    config.mem_size = 128 << 20;
    config.vcpus = 2;
    let error = run(config).unwrap_err();
    assert!(matches!(error, VmmError::Snapshot { .. }), "{error}");
    let message = error.to_string();
    for part in [
        "guest RAM is 64 MiB in the snapshot, 128 MiB in this VM",
        "1 vCPUs in the snapshot, 2 in this VM",
        "remove the snapshot directory to rebuild it",
    ] {
        assert!(message.contains(part), "{message}");
    }
}

#[test]
fn a_restored_disk_of_another_size_signals_a_config_change() {
    let guest = Guest::new(&format!(
        r#"{BLK_DRIVER}
    blk_setup
    step
    cmp qword [rbx + 0x100], 2       ; the template's disk: 2 sectors
    jne fail
    mov r13d, [rbx + 0xfc]           ; config generation
    putc 'S'
    mov rax, 0xd0000000
    mov byte [rax], 0x73             ; ask for a snapshot
    putc 'R'
    step
    mov rcx, 0x100000                ; raised before the vCPUs ran: no long wait
.wait_config:
    test dword [rbx + 0x60], 2       ; config-change interrupt status
    jnz .changed
    pause
    dec rcx
    jnz .wait_config
    jmp fail
.changed:
    mov dword [rbx + 0x64], 2        ; acknowledge
    step
    inc r13d
    cmp [rbx + 0xfc], r13d           ; a new config generation
    jne fail
    step
    cmp qword [rbx + 0x100], 8       ; the new disk's capacity
    jne fail
    blk_read_first 5, 'SECTOR-5'     ; the restored queue serves the new disk
    putc 'K'
    reset
"#
    ));
    let mut config = guest.config();
    config.snapshot_to = Some(snapshot_dir(&guest));
    config.disks.push(DiskConfig {
        path: disk_image(&guest.dir.path().join("template.img"), 2),
        read_only: false,
    });
    let exit = run(config).unwrap();
    assert_eq!(guest.console(), "S", "a letter names the failed check");
    assert_eq!(exit.reason, ExitReason::Snapshotted);

    let (mut config, console) = restore_config(&guest, "restored.out");
    config.disks.push(DiskConfig {
        path: disk_image(&guest.dir.path().join("image.img"), 8),
        read_only: false,
    });
    let exit = run(config).unwrap();
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "RK",
        "a letter after R names the failed check"
    );
    assert_eq!(exit.reason, ExitReason::Reboot);
}
