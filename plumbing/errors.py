"""Errors a user can act on: one line on stderr, exit code 2, no traceback."""

import os
import re
import sys
from contextlib import contextmanager


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""


def run_cli(main_fn):
    """Run an entry point so that a `UsageError` (also raised inside Hydra), a command line Hydra
    cannot compose (model=nope, a malformed override) and an OS error on a named file (a full disk
    while a library writes) are one line and exit 2."""
    # without it Hydra catches exceptions of config composition itself, prints a trace and exits 1
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import HydraException
    from omegaconf.errors import InterpolationResolutionError

    with usage_errors_exit():
        check_shell_completion(sys.argv)
        try:
            main_fn()
        except HydraException as err:
            raise UsageError(composition_error(err)) from None
        except InterpolationResolutionError as err:  # a resolver (${tiny_world:...}) refused a value
            message = resolver_usage_error(err)
            if message is None:
                raise
            raise UsageError(message) from None
        except OSError as err:
            if not err.filename:  # without the file's name one line could not say what to fix
                raise
            raise UsageError(
                f"cannot use {err.filename} ({err.strerror or first_line(err)}); free disk space "
                "or fix the path, then rerun the same command"
            ) from None


def resolver_usage_error(err):
    """The message of the UsageError a config resolver raised, which OmegaConf wraps (keeping only its
    text unless OC_CAUSE=1); None for any other resolution error."""
    cause = err
    while cause is not None:
        if isinstance(cause, UsageError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    prefix = f"{UsageError.__name__} raised while resolving interpolation: "
    text = str(err).splitlines()[0] if str(err) else ""
    return text[len(prefix) :] if text.startswith(prefix) else None


SHELL_COMPLETION_COMMANDS = ("install", "uninstall", "query")


def check_shell_completion(argv):
    """Hydra's --shell-completion (-sc) needs one of its subcommands; without one Hydra raises a traceback."""
    if not {"--shell-completion", "-sc"} & set(argv):
        return
    if not any(arg.split("=")[0] in SHELL_COMPLETION_COMMANDS for arg in argv[1:]):
        script = os.path.basename(argv[0])
        choices = ", ".join(f"{command}=SHELL" for command in SHELL_COMPLETION_COMMANDS)
        raise UsageError(f'--shell-completion needs one of {choices}; e.g. eval "$(python {script} -sc install=bash)"')


# key -> the option names a config may hold at that key's level; plumbing.schemas installs it (the
# schemas know the names; this module imports nothing of the project)
option_names = None


def unknown_option(message):
    """`key` when Hydra's message says an override names no option of the config, else None."""
    match = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct", message)
    return match and (match[1] or match[2])


def composition_error(err):
    """One line for an error of Hydra's config composition: a value of the wrong type for its schema
    as `key=value is invalid; it must be ...`, an option name the config does not have with the closest
    known names, anything else as its message on one line."""
    import difflib

    from omegaconf.errors import ValidationError

    key = unknown_option(str(err))
    if key and not key.startswith("hydra."):
        close = difflib.get_close_matches(key, option_names(key) if option_names else [], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "see --help for the options"
        return f"{key} is not an option; {hint}"
    cause = err.__cause__
    kind = (
        re.search(r"converted to (\w+)|not a valid (bool)", str(cause)) if isinstance(cause, ValidationError) else None
    )
    wanted = {"Float": "a number", "Integer": "an integer", "bool": "true or false"}.get(kind and (kind[1] or kind[2]))
    if wanted and getattr(cause, "full_key", None):
        return f"{cause.full_key}={cause.value} is invalid; it must be {wanted}"
    return one_line(err)


def one_line(message):
    """A multi-line message (Hydra's lists options one per line) as one line, without its search path."""
    parts = []
    for line in (line.strip() for line in str(message).splitlines()):
        if line.startswith("Config search path"):
            break
        if not line:
            continue
        if parts and parts[-1][-1] not in ":.":
            parts[-1] += ";" if parts[-1][-1] == "'" else ","
        parts.append(line)
    return " ".join(parts)


@contextmanager
def usage_errors_exit():
    """A `UsageError` raised in the block: one line on stderr, exit 2. A Hydra task function wraps
    its body in this, because Hydra prints an extra line for an exception leaving a job."""
    try:
        yield
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
