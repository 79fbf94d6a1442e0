"""Runs a script as this process's program while recording every file it writes, creates,
renames or removes below a folder (Python's audit hooks: ``open`` for writing, ``os.rename``,
``os.remove``, ``os.mkdir``, ``shutil.rmtree``, ...), for tests/test_distributed.py:

    python tests/multiprocess/audit_writes.py ROOT LOG SCRIPT [ARGS...]

At exit the paths are written, one per line, to ``LOG.<process id>`` (the id from the
launcher's environment). Writes through C++ (orbax's tensorstore) are not seen.
"""

import atexit
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate",
           "os.chmod", "os.link", "os.symlink"}


def main() -> None:
    root, log, script, *args = sys.argv[1:]
    root = os.path.realpath(root)
    seen: list[str] = []

    def below(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(root)
        except (TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and isinstance(path, (str, bytes, os.PathLike)) and below(path):
                seen.append(f"open {os.fsdecode(path)}")
        elif event in _EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
            if below(args[0]):
                seen.append(f"{event} {os.fsdecode(args[0])}")

    def report() -> None:
        with open(f"{log}.{os.environ.get('JAXPET_PROCESS_ID', '0')}", "w") as f:
            f.write("".join(f"{line}\n" for line in seen))

    atexit.register(report)
    sys.addaudithook(hook)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
