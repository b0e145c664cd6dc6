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

#[test]
fn virtio_mmio_negotiation_and_a_block_read() {
    let guest = Guest::new(
        r#"
DESC  equ 0x300000
AVAIL equ 0x301000
USED  equ 0x302000
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
    step
    cmp qword [rbx + 0x100], 2       ; capacity: 2 sectors
    jne fail
    ; A read of sector 1: header, 512-byte buffer, status byte.
    mov dword [0x310000], 0
    mov dword [0x310004], 0
    mov qword [0x310008], 1
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
.wait:
    cmp word [USED + 2], 1
    je .done
    pause
    dec rcx
    jnz .wait
    jmp fail
.done:
    step
    cmp byte [0x312000], 0            ; VIRTIO_BLK_S_OK
    jne fail
    step
    mov rax, 'SECTOR-1'
    cmp [0x311000], rax
    jne fail
    step
    cmp dword [USED + 8], 513         ; used length: data + status
    jne fail
    putc 'B'
    reset
"#,
    );
    let disk = guest.dir.path().join("disk.img");
    let mut image = vec![0u8; 1024];
    image[512..520].copy_from_slice(b"SECTOR-1");
    std::fs::write(&disk, &image).unwrap();
    let mut config = guest.config();
    config.disks.push(DiskConfig {
        path: disk,
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
