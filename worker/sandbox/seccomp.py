"""The seccomp filter of sandboxed jobs: a classic-BPF program assembled here, for ``bwrap --seccomp FD``.

No native dependency: the program (an array of ``struct sock_filter`` in native byte order) is
assembled in Python for x86_64 and aarch64. The policy:

- the architecture is checked first; x86_64 and aarch64 have their own syscall tables, any other
  architecture (i386 through ``int 0x80`` on an x86_64 kernel, say) kills the process, and the x32
  ABI (x86_64 numbers with bit 30 set) is refused with ``EPERM``;
- the calls of :data:`DENY` fail with ``EPERM``: mounting and the new mount API, namespaces
  (``unshare``, ``setns``), tracing and reading other processes (``ptrace``,
  ``process_vm_readv``...), the kernel keyring, ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``kexec``, module loading, ``reboot``, swap, quotas, ``open_by_handle_at``, ``io_uring``,
  ``syslog``, the clock setters and, on x86, port I/O and ``modify_ldt``;
- ``clone`` with any ``CLONE_NEW*`` flag fails with ``EPERM``; ``clone3`` (whose flags live in
  memory a filter cannot read) fails with ``ENOSYS``, so glibc falls back to ``clone``;
- ``personality`` is allowed only for the values glibc and Python use (:data:`PERSONALITY_OK`),
  so a job cannot switch off address-space randomisation;
- ``ioctl`` ``TIOCSTI`` and ``TIOCLINUX`` (pushing input into a terminal) fail with ``EPERM``;
- everything else is allowed: threads, ``fork``, ``exec``, ``mmap``, ``memfd``, sockets in the
  job's own network namespace, and the ioctls the CUDA driver needs.

:func:`run_filter` interprets a program in Python, so the policy is unit-tested without a kernel.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "AUDIT_ARCH_AARCH64",
    "AUDIT_ARCH_X86_64",
    "DENY",
    "RET_ALLOW",
    "RET_ERRNO",
    "RET_KILL_PROCESS",
    "SPECIAL",
    "build",
    "filter_program",
    "program_fd",
    "run_filter",
]

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_RET_K = 0x06  # BPF_RET | BPF_K
_OFF_NR, _OFF_ARCH = 0, 4  # struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6]
_MAX_INSNS = 4096

EPERM, ENOSYS = 1, 38
X32_SYSCALL_BIT = 0x40000000
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET."""
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, with UNAME26 and/or READ_IMPLIES_EXEC... as glibc sets them, and the query value."""
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

DENY: Mapping[str, tuple[int | None, int | None]] = {
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "kcmp": (312, 272),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "open_by_handle_at": (304, 265),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "lookup_dcookie": (212, 18),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "fanotify_init": (300, 262),
    "ioperm": (173, None),
    "iopl": (172, None),
    "modify_ldt": (154, None),
    "uselib": (134, None),
}
"""Syscalls answered with EPERM: name -> (x86_64 number, aarch64 number); None where the arch has none.

The numbers were checked against libseccomp 2.5.4's tables for both architectures."""

SPECIAL: Mapping[str, tuple[int, int]] = {
    "clone": (56, 220),
    "clone3": (435, 435),
    "personality": (135, 92),
    "ioctl": (16, 29),
}
"""Syscalls whose arguments the filter inspects (or, for clone3, answers with ENOSYS)."""

_ARCHES: Mapping[str, tuple[int, int]] = {"x86_64": (AUDIT_ARCH_X86_64, 0), "aarch64": (AUDIT_ARCH_AARCH64, 1)}


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of syscall argument ``index`` (both supported arches are little-endian)."""
    return 16 + 8 * index


Target = str | int


@dataclass
class _Assembler:
    """A tiny assembler: jump targets may name labels, resolved to relative offsets at the end."""

    code: list[tuple[int, Target, Target, Target]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, opcode: int, k: Target = 0, jt: Target = 0, jf: Target = 0) -> None:
        self.code.append((opcode, jt, jf, k))

    def _offset(self, pc: int, target: Target) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - pc - 1
        if offset < 0:
            raise ValueError(f"seccomp: backward jump to {target}")
        return offset

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (opcode, jt, jf, k) in enumerate(self.code):
            if opcode == _JA:
                k_val, jt_val, jf_val = self._offset(pc, k), 0, 0
            else:
                assert isinstance(k, int)
                k_val, jt_val, jf_val = k, self._offset(pc, jt), self._offset(pc, jf)
                if jt_val > 255 or jf_val > 255:
                    raise ValueError("seccomp: conditional jump too far")
            out += struct.pack("=HBBI", opcode, jt_val, jf_val, k_val & 0xFFFFFFFF)
        if len(self.code) > _MAX_INSNS:
            raise ValueError("seccomp: program too long")
        return bytes(out)


def build(deny: Mapping[str, tuple[int | None, int | None]] = DENY) -> bytes:
    """Assemble the filter (a raw ``struct sock_filter`` array) for x86_64 and aarch64."""
    asm = _Assembler()
    asm.op(_LD_W_ABS, _OFF_ARCH)
    for arch, (audit, _) in _ARCHES.items():
        asm.op(_JEQ_K, audit, 0, 1)
        asm.op(_JA, arch)
    asm.op(_RET_K, RET_KILL_PROCESS)
    for arch, (_, col) in _ARCHES.items():
        p = f"{arch}."
        asm.label(arch)
        asm.op(_LD_W_ABS, _OFF_NR)
        if arch == "x86_64":
            asm.op(_JGE_K, X32_SYSCALL_BIT, p + "eperm", 0)
        asm.op(_JEQ_K, SPECIAL["clone"][col], p + "clone", 0)
        asm.op(_JEQ_K, SPECIAL["clone3"][col], p + "enosys", 0)
        asm.op(_JEQ_K, SPECIAL["personality"][col], p + "personality", 0)
        asm.op(_JEQ_K, SPECIAL["ioctl"][col], p + "ioctl", 0)
        for numbers in deny.values():
            nr = numbers[col]
            if nr is not None:
                asm.op(_JEQ_K, nr, p + "eperm", 0)
        asm.op(_RET_K, RET_ALLOW)
        asm.label(p + "clone")
        asm.op(_LD_W_ABS, _arg_low(0))
        asm.op(_JSET_K, CLONE_NS_FLAGS, p + "eperm", p + "allow")
        asm.label(p + "personality")
        asm.op(_LD_W_ABS, _arg_low(0))
        for value in PERSONALITY_OK:
            asm.op(_JEQ_K, value, p + "allow", 0)
        asm.op(_JA, p + "eperm")
        asm.label(p + "ioctl")
        asm.op(_LD_W_ABS, _arg_low(1))
        asm.op(_JEQ_K, TIOCSTI, p + "eperm", 0)
        asm.op(_JEQ_K, TIOCLINUX, p + "eperm", p + "allow")
        asm.label(p + "allow")
        asm.op(_RET_K, RET_ALLOW)
        asm.label(p + "eperm")
        asm.op(_RET_K, RET_ERRNO | EPERM)
        asm.label(p + "enosys")
        asm.op(_RET_K, RET_ERRNO | ENOSYS)
    return asm.assemble()


@functools.cache
def filter_program() -> bytes:
    """The job filter, assembled once per process."""
    return build()


def program_fd(program: bytes | None = None) -> int:
    """A new inheritable fd (a memfd) positioned at the start of the program, for ``bwrap --seccomp FD``.

    bubblewrap reads the fd from its current offset, so every job needs its own; the caller closes
    it once the job has started.
    """
    data = filter_program() if program is None else program
    fd = os.memfd_create("flopex-seccomp", 0)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def run_filter(program: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Interpret ``program`` for a syscall (``arch``, ``nr``, ``args``) as the kernel would; return the action."""
    padded = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack("=iIQ6Q", nr, arch, 0, *padded)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        opcode, jt, jf, k = insns[pc]
        if opcode == _LD_W_ABS:
            acc = int(struct.unpack_from("=I", data, k)[0])
            pc += 1
        elif opcode == _RET_K:
            return int(k)
        elif opcode == _JA:
            pc += 1 + k
        elif opcode in (_JEQ_K, _JGE_K, _JSET_K):
            if opcode == _JEQ_K:
                taken = acc == k
            elif opcode == _JGE_K:
                taken = acc >= k
            else:
                taken = bool(acc & k)
            pc += 1 + (jt if taken else jf)
        else:
            raise ValueError(f"seccomp: unknown opcode {opcode:#x}")
