"""Every experiment's main: flags derived from its config, one run, one error path.

An experiment module (``jaxpet.experiments.<name>``) exposes ``Config`` (a
dataclass of :func:`jaxpet.config.setting` fields), ``PRESETS`` (named
configs; may be empty), ``run(config) -> results`` and ``summary_path(config)``.
``experiments/<name>.py`` is then just ``cli.main(module)``.

User errors (:class:`jaxpet.errors.UserError`, or a ``ValueError`` raised by
jaxpet's own input checks) end the program with one line
``error: <what> — <how to fix>`` on stderr and exit status 1; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import linecache
import pathlib
import sys
import types

from absl import app, flags, logging

from jaxpet import config as config_lib, distributed, progress
from jaxpet.errors import UserError

_PACKAGE = str(pathlib.Path(__file__).resolve().parent)


def is_user_error(error: BaseException) -> bool:
    """A UserError, or a ValueError that a ``raise`` statement of jaxpet's own checks raised
    (not one from deep in a library, nor a bug such as a failed unpacking in jaxpet)."""
    if isinstance(error, UserError):
        return True
    if not isinstance(error, ValueError):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return line.startswith("raise ")


def guarded(fn, *args, **kwargs):
    """Calls ``fn``; a user error becomes ``error: ...`` on stderr and exit status 1."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # re-raised unless it is the user's to fix
        if is_user_error(e):
            sys.exit(f"error: {e}")
        lost = distributed.lost_peer(e)
        if lost is not None:
            distributed.abort(f"error: {lost}")
        raise


def define_output_flags() -> None:
    """--progress and --quiet: how a script reports its progress (every script has them)."""
    if "progress" not in flags.FLAGS:
        flags.DEFINE_enum("progress", "auto", list(progress.MODES),
                          "How progress is shown: auto (a bar redrawn in place when stderr is a "
                          "terminal, else log lines), bar, log (a line per epoch and at most every "
                          "10 s of a long phase, with images/s, elapsed time and the ETA of the "
                          "phase and the run), or off.", module_name=sys.argv[0])
        flags.DEFINE_bool("quiet", False, "Only warnings and errors on stderr (no progress, no "
                          "info lines); the summary is still printed. For scripts.",
                          module_name=sys.argv[0])


def define_distributed_flags() -> None:
    """How a process joins a multi-process run (see :mod:`jaxpet.distributed`); every script
    has them. Unset, the launcher's environment decides, and without it one process runs."""
    if "num_processes" in flags.FLAGS:
        return
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: process 0's host:port, "
                        "the same for every process (default: $JAXPET_COORDINATOR_ADDRESS, which "
                        "python -m jaxpet.launch sets).", module_name=sys.argv[0])
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes run "
                         "this command (default: $JAXPET_NUM_PROCESSES, else 1).", lower_bound=1,
                         module_name=sys.argv[0])
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index in "
                         "[0, --num_processes) (default: $JAXPET_PROCESS_ID).", lower_bound=0,
                         module_name=sys.argv[0])
    flags.DEFINE_integer("coordinator_timeout", distributed.INIT_TIMEOUT_SECONDS,
                         "Multi-process runs: seconds to wait for the coordinator and every "
                         "process at the start.", lower_bound=1, module_name=sys.argv[0])
    flags.DEFINE_bool("distributed", False, "Join a multi-process run by JAX's cluster "
                      "detection (TPU pod slices, SLURM, Open MPI) instead of the three flags "
                      "above.", module_name=sys.argv[0])


def apply_distributed_flags() -> None:
    """Starts the multi-process runtime when the flags or the environment ask for it."""
    f = flags.FLAGS
    guarded(distributed.initialize, f.coordinator_address, f.num_processes, f.process_id,
            auto=f.distributed, timeout_seconds=f.coordinator_timeout)


def apply_output_flags() -> None:
    """Applies --progress and --quiet to the runs made from now on."""
    quiet = flags.FLAGS.quiet
    progress.set_default_mode("off" if quiet else flags.FLAGS.progress)
    if quiet:
        logging.set_verbosity(logging.WARNING)


def main(experiment: types.ModuleType) -> None:
    """Defines the experiment's flags, parses them, runs it and prints its summary."""
    define_output_flags()
    define_distributed_flags()
    presets = getattr(experiment, "PRESETS", None) or None
    config_lib.define_flags(experiment.Config, presets=presets,
                            preset_help=getattr(experiment, "PRESET_HELP", ""),
                            module_name=sys.argv[0])

    def _parse(argv):
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:  # a value absl cannot parse, an unknown flag
            sys.exit(f"error: {e} — see --help for every flag and its values.")
        if len(rest) > 1:
            sys.exit(f"error: unexpected arguments {rest[1:]} — flags are written --name=value "
                     "(see --help).")
        return rest

    def _main(argv):
        del argv
        apply_output_flags()
        apply_distributed_flags()  # before any device is touched
        config = guarded(config_lib.from_flags, experiment.Config, presets=presets)
        guarded(experiment.run, config)
        summary = pathlib.Path(experiment.summary_path(config))
        logging.info("Done: %s", summary.parent)
        if summary.exists() and distributed.is_writer():  # printed once
            print(summary.read_text())

    app.run(_main, flags_parser=_parse)

