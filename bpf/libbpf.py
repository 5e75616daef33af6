"""ctypes binding of the few libbpf 1.x calls cellmesh needs (the only module that loads libbpf).

libbpf 1.x conventions: int APIs return -errno; pointer APIs return NULL and set errno. Both are
turned into `LibbpfError` here, with the errno's name. libbpf's log output (the verifier log
included) is captured through `libbpf_set_print` so a load failure can carry it in its message;
the callback is kept in a module-level reference, or it would be collected and the process crash.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

c_void_p = ctypes.c_void_p


class LibbpfError(OSError):
    """A libbpf call failed; `log` holds what libbpf printed meanwhile (e.g. the verifier log)."""

    def __init__(self, call: str, err: int, log: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        message = f"{call} failed: {name} ({os.strerror(err)})"
        if log:
            message += "\n" + log
        super().__init__(err, message)
        self.call = call
        self.log = log


def _load() -> ctypes.CDLL:
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        return ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        raise LibbpfError("dlopen libbpf", errno.ENOENT, f"{path}: {e} (run `make setup`)") from e


lib = _load()

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, c_void_p)
_vsnprintf = ctypes.CDLL(None).vsnprintf
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, c_void_p]
_log_lock = threading.Lock()
_log_lines: list[str] = []


def _print(level: int, fmt: bytes | None, args: int | None) -> int:
    buf = ctypes.create_string_buffer(4096)
    _vsnprintf(buf, len(buf), fmt, args)
    with _log_lock:
        _log_lines.append(buf.value.decode(errors="replace"))
        del _log_lines[:-400]
    return 0


# Keep the callback alive for the life of the process (libbpf holds a raw pointer to it).
_PRINT_CALLBACK = _PRINT_FN(_print)
lib.libbpf_set_print.argtypes = [_PRINT_FN]
lib.libbpf_set_print.restype = c_void_p
lib.libbpf_set_print(_PRINT_CALLBACK)


def take_log() -> str:
    with _log_lock:
        text = "".join(_log_lines).strip()
        _log_lines.clear()
    return text


def _sig(name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_sig("bpf_object__open_file", c_void_p, ctypes.c_char_p, c_void_p)
_sig("bpf_object__load", ctypes.c_int, c_void_p)
_sig("bpf_object__close", None, c_void_p)
_sig("bpf_object__find_map_by_name", c_void_p, c_void_p, ctypes.c_char_p)
_sig("bpf_object__find_program_by_name", c_void_p, c_void_p, ctypes.c_char_p)
_sig("bpf_map__set_pin_path", ctypes.c_int, c_void_p, ctypes.c_char_p)
_sig("bpf_map__fd", ctypes.c_int, c_void_p)
_sig("bpf_map__set_max_entries", ctypes.c_int, c_void_p, ctypes.c_uint32)
_sig("bpf_map__max_entries", ctypes.c_uint32, c_void_p)
_sig("bpf_program__fd", ctypes.c_int, c_void_p)
_sig("bpf_program__attach_cgroup", c_void_p, c_void_p, ctypes.c_int)
_sig("bpf_link__pin", ctypes.c_int, c_void_p, ctypes.c_char_p)
_sig("bpf_link__open", c_void_p, ctypes.c_char_p)
_sig("bpf_link__update_program", ctypes.c_int, c_void_p, c_void_p)
_sig("bpf_link__destroy", ctypes.c_int, c_void_p)
_sig("bpf_link__fd", ctypes.c_int, c_void_p)
_sig("bpf_obj_get", ctypes.c_int, ctypes.c_char_p)
_sig("bpf_map_update_elem", ctypes.c_int, ctypes.c_int, c_void_p, c_void_p, ctypes.c_uint64)
_sig("bpf_map_lookup_elem", ctypes.c_int, ctypes.c_int, c_void_p, c_void_p)
_sig("bpf_map_delete_elem", ctypes.c_int, ctypes.c_int, c_void_p)
_sig("bpf_map_get_next_key", ctypes.c_int, ctypes.c_int, c_void_p, c_void_p)
_sig(
    "bpf_map_update_batch",
    ctypes.c_int, ctypes.c_int, c_void_p, c_void_p, ctypes.POINTER(ctypes.c_uint32), c_void_p,
)  # fmt: skip
_sig(
    "bpf_map_lookup_batch",
    ctypes.c_int, ctypes.c_int, c_void_p, c_void_p, c_void_p, c_void_p,
    ctypes.POINTER(ctypes.c_uint32), c_void_p,
)  # fmt: skip
_sig(
    "bpf_obj_get_info_by_fd", ctypes.c_int, ctypes.c_int, c_void_p, ctypes.POINTER(ctypes.c_uint32)
)
_sig(
    "bpf_map_delete_batch",
    ctypes.c_int, ctypes.c_int, c_void_p, ctypes.POINTER(ctypes.c_uint32), c_void_p,
)  # fmt: skip


def check_int(call: str, rc: int) -> int:
    """libbpf int convention: negative is -errno."""
    if rc < 0:
        raise LibbpfError(call, -rc, take_log())
    return rc


def check_ptr(call: str, ptr: int | None) -> int:
    """libbpf pointer convention: NULL and errno."""
    if not ptr:
        raise LibbpfError(call, ctypes.get_errno() or errno.EINVAL, take_log())
    return ptr


def check_syscall(call: str, rc: int) -> int:
    """Low-level bpf_* wrappers: -1 and errno (or -errno in libbpf 1.x strict mode)."""
    if rc < 0:
        err = ctypes.get_errno() if rc == -1 else -rc
        raise LibbpfError(call, err or errno.EINVAL)
    return rc


_INFO_MAX_ENTRIES = 16  # offset of max_entries in struct bpf_map_info (linux/bpf.h)


def pinned_map_max_entries(path: bytes) -> int:
    """max_entries of the map pinned at path (raises LibbpfError when it cannot be read)."""
    fd = check_syscall(f"bpf_obj_get {path.decode(errors='replace')}", lib.bpf_obj_get(path))
    try:
        info = ctypes.create_string_buffer(128)
        size = ctypes.c_uint32(len(info))
        check_syscall("bpf_obj_get_info_by_fd", lib.bpf_obj_get_info_by_fd(fd, info, size))
        return int.from_bytes(info.raw[_INFO_MAX_ENTRIES : _INFO_MAX_ENTRIES + 4], "little")
    finally:
        os.close(fd)
